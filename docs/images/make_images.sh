#!/usr/bin/env bash
# Re-draw the README's pictures with convarith itself: bash docs/images/make_images.sh
set -euo pipefail
cd "$(dirname "$0")"
convarith animate 5 -k 3 -p same -s 2 -o padding_strides.gif --force
convarith animate 7 -k 3 -d 2 -o dilation.svg --force
convarith animate 3 -k 3 -s 2 -p 1 --transposed --view scatter --values -o transposed_scatter.gif --force
convarith animate 5 -k 3 -p same -s 2 --view flat --values -o padding_strides_values.png --step 4 --force
