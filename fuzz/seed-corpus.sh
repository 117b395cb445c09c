#!/bin/sh
# Seeds fuzz/corpus/<target>/ with small real streams made by the release
# tools. Run from anywhere after `cargo build --release` in the main workspace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/../target/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The fixed key the filters target decrypts with (fuzz_targets/filters.rs).
printf 'backpipe key v1\n%s\n' \
  4242424242424242424242424242424242424242424242424242424242424242 > "$work/key"

# A small tree: text, a random blob, repetitive text, an empty file, a subdirectory, a symlink.
mkdir -p "$work/tree/sub"
cp "$here/../lib/src/lib.rs" "$here/../lib/stream/src/random.rs" "$work/tree/"
head -c 4000 /dev/urandom > "$work/tree/sub/blob"
yes backpipe | head -c 8000 > "$work/tree/sub/repeated"
: > "$work/tree/sub/empty"
ln -s ../lib.rs "$work/tree/sub/link"

small="--min-size 1K --avg-size 4K --max-size 16K"
out="$work/seeds"
mkdir "$out"
cd "$work"
"$bin/dump-files" tree/lib.rs > "$out/plain-one-file.bp"
"$bin/dump-files" tree > "$out/plain-tree.bp"
"$bin/dump-files" tree | "$bin/chunk" $small > "$out/chunked.bp"
"$bin/dump-files" tree | "$bin/chunk" $small | "$bin/squeeze" > "$out/chunked-squeezed.bp"
"$bin/dump-files" tree | "$bin/squeeze" > "$out/squeezed.bp"
"$bin/dump-files" tree | "$bin/encrypt" --key-file key > "$out/encrypted.bp"
"$bin/dump-files" tree | "$bin/chunk" $small | "$bin/squeeze" \
  | "$bin/encrypt" --key-file key > "$out/chunked-squeezed-encrypted.bp"
cat "$out/plain-one-file.bp" "$out/squeezed.bp" > "$out/concatenated.bp"

for target in frame_reader filters; do
  mkdir -p "$here/corpus/$target"
  cp "$out"/*.bp "$here/corpus/$target/"
done
ls -l "$out"
