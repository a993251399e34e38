#!/bin/sh
echo "run.sh from mydir, beside: $(cat mydir/a.txt)"
