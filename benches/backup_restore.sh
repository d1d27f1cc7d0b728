#!/usr/bin/env bash
# Backup and restore throughput of wakeway against zip -r / unzip, on the same data.
#
#   benches/backup_restore.sh [SIZE_MB] [WORKDIR]
#
# Builds `wakeway` in release (no failpoints), generates a workspace of many small files
# (SIZE_MB, default 1024: source-like text and incompressible binary, 1-64 KiB each, in nested
# folders), then times, each on the same warm page cache:
#   wakeway backup   (zip -> fsync -> reopen and verify every entry -> SHA-256 -> record -> rename)
#   zip -qr          (level 6, the default; no fsync, no verification)
#   wakeway restore  (check every entry -> SHA-256 against the record -> extract -> syncfs -> swap)
#   unzip -q         (no checks beyond CRC, no flush), and unzip followed by `sync`
# MB/s is workspace content (MiB of file data) divided by wall time. Not a timed test.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
WORK=${2:-$(mktemp -d /tmp/wakeway-bench.XXXXXX)}
mkdir -p "$WORK"
command -v zip >/dev/null && command -v unzip >/dev/null || { echo "install zip and unzip (apt-get install zip unzip)"; exit 1; }

cargo build --release --quiet --bin wakeway
BIN=$PWD/target/release/wakeway

SRC=$WORK/workspace
if [ ! -d "$SRC" ]; then
  echo "generating ~${SIZE_MB} MiB of small files in $SRC ..."
  python3 - "$SRC" "$SIZE_MB" <<'EOF'
import os, random, sys
root, size_mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz_') for _ in range(rng.randint(2, 12))) for _ in range(5000)]
total, target, n = 0, size_mb << 20, 0
while total < target:
    d = os.path.join(root, f"pkg{n // 2000:03d}", f"mod{(n // 100) % 20:02d}")
    os.makedirs(d, exist_ok=True)
    size = int(2 ** rng.uniform(10, 16))  # 1 KiB .. 64 KiB, log-uniform
    if rng.random() < 0.6:
        text = []
        length = 0
        while length < size:
            line = ' '.join(rng.choice(words) for _ in range(rng.randint(3, 12))) + ';\n'
            text.append(line)
            length += len(line)
        data = ''.join(text).encode()[:size]
        name = f"file{n:06d}.rs"
    else:
        data = os.urandom(size)
        name = f"blob{n:06d}.bin"
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)
    total += len(data)
    n += 1
print(f"{n} files, {total / 2**20:.0f} MiB")
EOF
fi
CONTENT=$(du -sb --apparent-size "$SRC" | cut -f1)
FILES=$(find "$SRC" -type f | wc -l)
find "$SRC" -type f -exec cat {} + >/dev/null  # warm the page cache for every run alike

mbps() { python3 -c "print(f'{$CONTENT / 2**20 / $1:.0f}')"; }
run() { # label, command... ; wall time (MiB/s from it) and CPU time (user + sys, all threads)
  local label=$1; shift
  local TIMEFORMAT='%R %U %S' times wall cpu
  times=$( { time "$@" >/dev/null 2>&1; } 2>&1 )
  wall=$(echo "$times" | cut -d' ' -f1)
  cpu=$(echo "$times" | awk '{ printf "%.1f", $2 + $3 }')
  printf '%-34s %7s s wall %6s MiB/s   %6s s CPU\n' "$label" "$wall" "$(mbps "$wall")" "$cpu"
}

rm -rf "$WORK/out" && mkdir -p "$WORK/out"
ZIP_W=$WORK/out/workspace-abc12345-20250101-120000.zip
ZIP_I=$WORK/out/infozip.zip
echo "content: $FILES files, $((CONTENT >> 20)) MiB; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
run "wakeway backup (verified)" "$BIN" backup --src "$SRC" --dest "$ZIP_W"
run "zip -qr (no verify, no fsync)" bash -c "cd '$SRC' && zip -qr '$ZIP_I' ."
echo "zip sizes: wakeway $(( $(stat -c %s "$ZIP_W") >> 20 )) MiB, zip -r $(( $(stat -c %s "$ZIP_I") >> 20 )) MiB"
run "wakeway restore (checked, syncfs)" "$BIN" restore --src "$ZIP_W" --dest "$WORK/out/restored-wakeway"
run "unzip -q" unzip -q "$ZIP_I" -d "$WORK/out/restored-unzip"
rm -rf "$WORK/out/restored-unzip"
run "unzip -q && sync" bash -c "unzip -q '$ZIP_I' -d '$WORK/out/restored-unzip' && sync"
echo "identical tree: $(diff -r "$SRC" "$WORK/out/restored-wakeway" >/dev/null && echo yes || echo NO)"
echo "(work folder: $WORK)"
