#!/bin/sh
echo "$GREETING"
echo "words: $(cat /app/data/COUNT)"
