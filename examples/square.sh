#!/bin/sh
# Shared input sandbox file of examples/many.py: writes the square of its argument to result.txt.
n=$1
echo "job $n on $(hostname)"
echo $((n * n)) > result.txt
