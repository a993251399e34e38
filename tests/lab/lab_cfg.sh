# Sourced by lab.sh: PKI, DIRAC configuration files and MariaDB databases of the lab.
# Expects LAB, VENV, DBPREFIX, DBUSER, DBPASS, MAXPARAM, JA_POLL to be set.
#
# Layout under $LAB:
#   pki/                   CA (pki/ca), certificates/ (CA dir for X509_CERT_DIR), host cert, user cert, proxy.pem
#   server/etc/dirac.cfg   local config of the services: host certificate, DB credentials (never served)
#   server/etc/LabConfig.cfg   what the Configuration Server serves to everybody (no secrets, no certificates)
#   server/etc/cs.cfg      extra local config of the master Configuration Server
#   client/etc/dirac.cfg   client config: only where the CS is; identity = X509_USER_PROXY
#   pilot/etc/dirac.cfg    JobAgent ("local pilot") config: client config + LocalSite + agent options
#   storage/sandboxes      SandboxStore files
#   storage/SE-1           the StorageElement's files (SE-1's BasePath: a replica of LFN /x/y is storage/SE-1/x/y)

# ---------------------------------------------------------------------------------------------- PKI
lab_pki() {
    local P=$LAB/pki
    if [ -s "$P/hostcert.pem" ] && [ -s "$P/usercert.pem" ] && openssl x509 -in "$P/usercert.pem" -noout -checkend 604800 >/dev/null 2>&1 \
        && openssl x509 -in "$P/hostcert.pem" -noout -checkend 604800 >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$P"
    mkdir -p "$P/ca/newcerts" "$P/certificates"
    (
        cd "$P/ca"
        touch index.txt; echo 1000 > serial
        cat > ca.cnf <<CNF
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = $P/ca
new_certs_dir = \$dir/newcerts
database = \$dir/index.txt
serial = \$dir/serial
private_key = \$dir/ca.key.pem
certificate = \$dir/ca.cert.pem
default_md = sha256
default_days = 365
preserve = no
policy = policy_loose
copy_extensions = copy
unique_subject = no
[ policy_loose ]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
string_mask = utf8only
default_md = sha256
[ dn ]
O = DIRAC Lab
CN = DIRAC Lab CA
[ v3_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, cRLSign, keyCertSign
[ usr_cert ]
basicConstraints = CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
keyUsage = critical, nonRepudiation, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
[ server_cert ]
basicConstraints = CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer:always
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
CNF
        openssl genrsa -out ca.key.pem 2048 2>/dev/null
        openssl req -config ca.cnf -key ca.key.pem -new -x509 -days 3650 -sha256 -extensions v3_ca -out ca.cert.pem
        cp ca.cert.pem "$P/certificates/labca.pem"
        ln -sf labca.pem "$P/certificates/$(openssl x509 -in ca.cert.pem -noout -hash).0"
        cd "$P"
        openssl genrsa -out hostkey.pem 2048 2>/dev/null; chmod 400 hostkey.pem
        openssl req -new -key hostkey.pem -subj "/O=DIRAC Lab/OU=hosts/CN=localhost" -out host.csr
        openssl ca -config ca/ca.cnf -batch -days 365 -extensions server_cert -in host.csr -out hostcert.pem 2>/dev/null
        openssl genrsa -out userkey.pem 2048 2>/dev/null; chmod 400 userkey.pem
        openssl req -new -key userkey.pem -subj "/O=DIRAC Lab/OU=users/CN=labuser" -out user.csr
        openssl ca -config ca/ca.cnf -batch -days 365 -extensions usr_cert -in user.csr -out usercert.pem 2>/dev/null
        rm -f host.csr user.csr
    )
    echo "pki: CA, host cert (CN=localhost), user cert (CN=labuser) in $P"
}

# ---------------------------------------------------------------------------------------------- cfg
CS_URL=dips://localhost:9135/Configuration/Server
SE_PATH=$LAB/storage/SE-1
# DIRAC's default (JobWrapper.py), bytes of the bz2-compressed output sandbox; tests lower it on the running CS
OSB_LIMIT_DEFAULT=10485760

lab_cfg() {
    local S=$LAB/server/etc
    mkdir -p "$S" "$LAB/client/etc" "$LAB/pilot/etc" "$LAB/pilot/work" "$LAB/storage/sandboxes" "$SE_PATH" "$LAB/logs" "$LAB/run"

    # --- served by the Configuration Server (every client sees this: no secrets, no certificate paths)
    cat > "$S/LabConfig.cfg.new" <<CFG
DIRAC
{
  VirtualOrganization = labvo
  Configuration
  {
    Name = LabConfig
    Servers = $CS_URL
  }
}
DiracX
{
  # no DiracX here: the VO is excluded from it (proxies are made with dirac-proxy-init -N)
  DisabledVOs = labvo
}
Registry
{
  DefaultGroup = labvo_user
  VO
  {
    labvo
    {
      VOAdmin = labuser
    }
  }
  Users
  {
    labuser
    {
      DN = /O=DIRAC Lab/OU=users/CN=labuser
      Email = labuser@localhost
    }
  }
  Groups
  {
    labvo_user
    {
      Users = labuser
      Properties = NormalUser
      VO = labvo
    }
    labvo_admin
    {
      Users = labuser
      Properties = NormalUser, Operator, JobAdministrator, ProxyManagement, FullDelegation, CSAdministrator, ServiceAdministrator, TrustedHost, GenericPilot, Pilot
      VO = labvo
    }
    labvo_pilot
    {
      Users = labuser
      Properties = GenericPilot, LimitedDelegation, Pilot
      VO = labvo
    }
  }
  Hosts
  {
    localhost
    {
      DN = /O=DIRAC Lab/OU=hosts/CN=localhost
      Properties = TrustedHost, CSAdministrator, JobAdministrator, FullDelegation, ProxyManagement, Operator, GenericPilot, Pilot, ServiceAdministrator, SiteManager
    }
  }
}
Systems
{
  ResourceStatus
  {
    Databases
    {
      ResourceStatusDB
      {
        DBName = ${DBPREFIX}ResourceStatusDB
      }
      ResourceManagementDB
      {
        DBName = ${DBPREFIX}ResourceManagementDB
      }
    }
    Services
    {
      ResourceStatus
      {
        Port = 9160
        Authorization
        {
          Default = SiteManager
          select = all
        }
      }
    }
    URLs
    {
      ResourceStatus = dips://localhost:9160/ResourceStatus/ResourceStatus
    }
  }
  WorkloadManagement
  {
    Databases
    {
      JobDB
      {
        DBName = ${DBPREFIX}JobDB
      }
      JobLoggingDB
      {
        DBName = ${DBPREFIX}JobLoggingDB
      }
      TaskQueueDB
      {
        DBName = ${DBPREFIX}TaskQueueDB
      }
      SandboxMetadataDB
      {
        DBName = ${DBPREFIX}SandboxMetadataDB
      }
      PilotAgentsDB
      {
        DBName = ${DBPREFIX}PilotAgentsDB
      }
    }
    Services
    {
      JobManager
      {
        Port = 9132
        MaxParametricJobs = $MAXPARAM
        Authorization
        {
          Default = authenticated
        }
      }
      JobMonitoring
      {
        Port = 9130
        Authorization
        {
          Default = authenticated
        }
      }
      JobStateUpdate
      {
        Port = 9136
        Authorization
        {
          Default = authenticated
        }
      }
      SandboxStore
      {
        Port = 9196
        LocalSE = ProductionSandboxSE
        BasePath = $LAB/storage/sandboxes
        MaxSandboxSizeMiB = 10
        UseDiracXBackend = False
        Authorization
        {
          Default = authenticated
          FileTransfer
          {
            Default = authenticated
          }
        }
      }
      OptimizationMind
      {
        Port = 9175
        # Under bursts (hundreds of submissions or kills) DIRAC 9's executor and JobManager connections
        # to the mind sometimes drop (M2Crypto "bad write retry") and a job's notification is lost: the
        # job stays Received until the mind reloads jobs from the database, every 5 minutes by default;
        # here every minute (DIRAC's ThreadScheduler allows no less).
        LoadJobPeriod = 60
      }
      Matcher
      {
        Port = 9170
        Authorization
        {
          Default = authenticated
          getActiveTaskQueues = JobAdministrator
        }
      }
    }
    Executors
    {
      Optimizers
      {
        Load = JobPath, JobSanity, InputData, JobScheduling
      }
      JobPath
      {
      }
      JobSanity
      {
      }
      InputData
      {
      }
      JobScheduling
      {
      }
    }
    JobWrapper
    {
      # Only here, in the served configuration: an option in a local dirac.cfg shadows the CS, and tests
      # change this one on the running CS (lab.sh cs-set). Each job's JobWrapper reads it when it starts.
      OutputSandboxLimit = $OSB_LIMIT_DEFAULT
    }
    URLs
    {
      JobManager = dips://localhost:9132/WorkloadManagement/JobManager
      JobMonitoring = dips://localhost:9130/WorkloadManagement/JobMonitoring
      JobStateUpdate = dips://localhost:9136/WorkloadManagement/JobStateUpdate
      SandboxStore = dips://localhost:9196/WorkloadManagement/SandboxStore
      OptimizationMind = dips://localhost:9175/WorkloadManagement/OptimizationMind
      Matcher = dips://localhost:9170/WorkloadManagement/Matcher
    }
  }
  DataManagement
  {
    Databases
    {
      FileCatalogDB
      {
        DBName = ${DBPREFIX}FileCatalogDB
      }
    }
    Services
    {
      FileCatalog
      {
        Port = 9197
        # DIRAC's defaults (DataManagementSystem/ConfigTemplate.cfg), which FileCatalogDB.sql matches
        UserGroupManager = UserAndGroupManagerDB
        SEManager = SEManagerDB
        SecurityManager = NoSecurityManager
        DirectoryManager = DirectoryLevelTree
        FileManager = FileManager
        UniqueGUID = False
        GlobalReadAccess = True
        LFNPFNConvention = Strong
        ResolvePFN = True
        DefaultUmask = 509
        VisibleStatus = AprioriGood
        Authorization
        {
          Default = authenticated
        }
      }
      StorageElement
      {
        Port = 9148
        BasePath = $SE_PATH
        MaxStorageSize = 0
        Authorization
        {
          Default = authenticated
          FileTransfer
          {
            Default = authenticated
          }
        }
      }
    }
    URLs
    {
      FileCatalog = dips://localhost:9197/DataManagement/FileCatalog
      StorageElement = dips://localhost:9148/DataManagement/StorageElement
    }
  }
}
Resources
{
  Sites
  {
    DIRAC
    {
      DIRAC.Lab.local
      {
        Name = LabSite
        SE = SE-1
        CE = localhost.ce
        CEs
        {
          localhost.ce
          {
            CEType = InProcess
            Queues
            {
              default
              {
                maxCPUTime = 10000
                SI00 = 1000
                MaxTotalJobs = 10
                MaxWaitingJobs = 10
              }
            }
          }
        }
      }
    }
  }
  StorageElements
  {
    ProductionSandboxSE
    {
      BackendType = DISET
      AccessProtocol = dips
      DIP
      {
        Host = localhost
        Port = 9196
        ProtocolName = DIP
        Protocol = dips
        Path = /WorkloadManagement/SandboxStore
        Access = remote
      }
    }
    # The lab's grid storage: DataManagement/StorageElement through DIRAC's DIP plugin (no gfal2).
    # A file of LFN /labvo/user/l/labuser/... is $SE_PATH/labvo/user/l/labuser/...
    SE-1
    {
      BackendType = DISET
      SEType = T0D1
      DIP
      {
        PluginName = DIP
        Host = localhost
        Port = 9148
        Protocol = dips
        Path = /DataManagement/StorageElement
        Access = remote
      }
    }
  }
  StorageElementGroups
  {
    # the JobWrapper's default output SE (setOutputData without outputSE, and oversized sandboxes)
    SE-USER = SE-1
  }
  FileCatalogs
  {
    FileCatalog
    {
      CatalogType = FileCatalog
      CatalogURL = DataManagement/FileCatalog
      AccessType = Read-Write
      Status = Active
      Master = True
    }
  }
}
Operations
{
  Defaults
  {
    EMail
    {
      Production = labuser@localhost
      Logging = labuser@localhost
    }
    MonitoringBackends
    {
      # No Accounting/Monitoring services here. With the default backend every output sandbox
      # download waits about 5 s on a failing accounting report.
      Default =
    }
    DataManagement
    {
      AccessProtocols = dips, file
      WriteProtocols = dips, file
      RegistrationProtocols = dips, file
      ThirdPartyProtocols = dips, file
    }
    Services
    {
      Catalogs
      {
        CatalogList = FileCatalog
        FileCatalog
        {
          AccessType = Read-Write
          Status = Active
          Master = True
        }
      }
    }
    Pilot
    {
      GenericPilotGroup = labvo_pilot
      GenericPilotUser = labuser
    }
    Shifter
    {
    }
  }
}
CFG

    # --- local config of every service process (host certificate, database credentials)
    cat > "$S/dirac.cfg.new" <<CFG
DIRAC
{
  Hostname = localhost
  Configuration
  {
    Name = LabConfig
    Servers = $CS_URL
  }
  Security
  {
    CALocation = $LAB/pki/certificates
    CertFile = $LAB/pki/hostcert.pem
    KeyFile = $LAB/pki/hostkey.pem
    UseServerCertificate = yes
  }
}
LocalSite
{
  Site = DIRAC.Lab.local
}
Systems
{
  Databases
  {
    # the lab's own account (lab_db), never the 'dirac' account other DIRAC installations may use
    User = $DBUSER
    Password = $DBPASS
    # 'localhost': mysqlclient uses the unix socket, so the services inside the network namespace
    # reach the MariaDB server of the root namespace
    Host = localhost
    Port = 3306
  }
  NoSQLDatabases
  {
    # No OpenSearch in the lab: a dead loopback port. Only job-parameter calls fail.
    Host = 127.0.0.1
    Port = 9299
    SSL = No
    User = none
    Password = none
  }
  WorkloadManagement
  {
    Databases
    {
      JobParametersDB
      {
        Host = 127.0.0.1
        Port = 9299
        SSL = No
        User = none
        Password = none
      }
    }
  }
}
CFG

    # --- extra local config of the master Configuration Server
    cat > "$S/cs.cfg.new" <<CFG
DIRAC
{
  Configuration
  {
    Master = yes
    Name = LabConfig
  }
}
Systems
{
  Configuration
  {
    Services
    {
      Server
      {
        HandlerPath = DIRAC/ConfigurationSystem/Service/ConfigurationHandler.py
        Port = 9135
        Authorization
        {
          Default = authenticated
          commitNewData = CSAdministrator
        }
      }
    }
  }
}
CFG

    # --- client: everything else comes from the CS; the identity is the user proxy (X509_USER_PROXY)
    cat > "$LAB/client/etc/dirac.cfg.new" <<CFG
DIRAC
{
  Configuration
  {
    Servers = $CS_URL
  }
  Security
  {
    UseServerCertificate = no
  }
}
CFG

    # --- JobAgent acting as a local pilot with the user proxy (InProcess CE)
    cat > "$LAB/pilot/etc/dirac.cfg.new" <<CFG
DIRAC
{
  Configuration
  {
    Servers = $CS_URL
  }
  Security
  {
    UseServerCertificate = no
  }
}
LocalSite
{
  Site = DIRAC.Lab.local
  GridCE = localhost.ce
  CEQueue = default
  LocalCE = InProcess
  CPUTimeLeft = 10000000
  CPUNormalizationFactor = 10.0
  Architecture = x86_64
  InstancePath = $LAB/pilot/work
}
Systems
{
  WorkloadManagement
  {
    Agents
    {
      JobAgent
      {
        PollingTime = $JA_POLL
        # run until stopped (the default, 500 cycles, ends the agent after ~17 min)
        MaxCycles = 0
        FillingModeFlag = true
        StopAfterFailedMatches = 1000000
        StopOnApplicationFailure = False
        StopAfterHostFailures = 1000000
        SubmissionDelay = 0
        CEType = InProcess
        JobWrapperTemplate = DIRAC/WorkloadManagementSystem/JobWrapper/JobWrapperTemplate.py
      }
    }
  }
}
CFG
    local f
    for f in "$S/LabConfig.cfg" "$S/dirac.cfg" "$S/cs.cfg" "$LAB/client/etc/dirac.cfg" "$LAB/pilot/etc/dirac.cfg"; do
        mv -f "$f.new" "$f"
    done
}

# ---------------------------------------------------------------------------------------------- DBs
LAB_DBS="JobDB JobLoggingDB TaskQueueDB SandboxMetadataDB PilotAgentsDB ResourceStatusDB ResourceManagementDB FileCatalogDB"

mariadb_up() {
    mysqladmin ping >/dev/null 2>&1 && return 0
    echo "starting MariaDB (/etc/init.d/mariadb start)"
    /etc/init.d/mariadb start >"$LAB/logs/mariadb-start.log" 2>&1 || { cat "$LAB/logs/mariadb-start.log" >&2; return 1; }
    touch "$LAB/run/mariadb.started-by-lab"
    local i
    for i in $(seq 1 60); do mysqladmin ping >/dev/null 2>&1 && return 0; sleep 0.5; done
    echo "MariaDB does not answer" >&2; return 1
}

# (Re)create the lab's databases, empty, from DIRAC's own schema files ($1: the DIRAC package directory),
# and the lab's own MariaDB account $DBUSER (default <DBPREFIX>dirac), granted only this lab's databases.
# The account 'dirac' is never created nor changed: other DIRAC installations on the machine may use it.
lab_db() {
    local diracdir=$1 db d
    {
        echo "CREATE USER IF NOT EXISTS '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';"
        echo "ALTER USER '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';"
        for db in $LAB_DBS; do
            d=${DBPREFIX}$db
            echo "DROP DATABASE IF EXISTS \`$d\`; CREATE DATABASE \`$d\`; GRANT ALL PRIVILEGES ON \`$d\`.* TO '$DBUSER'@'localhost';"
        done
        echo "FLUSH PRIVILEGES;"
        # each lab holds about 50 connections; the default 151 runs out with a few labs side by side
        echo "SET GLOBAL max_connections = GREATEST(@@max_connections, 1000);"
        for db in JobDB JobLoggingDB TaskQueueDB SandboxMetadataDB PilotAgentsDB; do
            sed "s/^USE $db;/USE \`${DBPREFIX}$db\`;/" "$diracdir/WorkloadManagementSystem/DB/$db.sql"
        done
        sed "s/^USE FileCatalogDB;/USE \`${DBPREFIX}FileCatalogDB\`;/" "$diracdir/DataManagementSystem/DB/FileCatalogDB.sql"
    } | mysql -uroot
}
