#!/bin/sh
# Prints how many arguments it got and each one in brackets: what a step really received.
echo "$# argument(s)"
for a in "$@"; do printf '[%s]\n' "$a"; done
