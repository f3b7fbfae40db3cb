#!/usr/bin/env bash
# Can llama.cpp's AMX kernels run here, built by this compiler? Exit 0 if so, printing the
# extra C++ flags the build needs (nothing, or -fno-dse); exit 1 if not. Why on stderr.
#
# Two things can go wrong, and both end in "Illegal instruction" on the first quantized
# matmul (Q4_K, Q8_0, ...), never on F16:
# - the machine: /proc/cpuinfo's amx_* flags say what the CPU has; a VM or the kernel may
#   still refuse the tile state (it must be asked for: arch_prctl(ARCH_REQ_XCOMP_PERM));
# - the compiler: llama.cpp fills a tile configuration on the stack and loads it with
#   _tile_loadconfig (ggml-cpu/amx/mmq.cpp). GCC 12 at -O2/-O3 does not see that the
#   instruction reads the configuration and drops the stores as dead (RTL dead-store
#   elimination), so the tiles are loaded unconfigured and the next tile instruction
#   faults. Measured here with GCC 12.2 (Debian 12): fails at -O2 and -O3, runs at -O1 or
#   with -fno-dse. (llama.cpp PR #26954 moves the configuration to .rodata; not merged.)
# So this compiles llama.cpp's pattern (a copy of its shape, not of its code) the way the
# build will (-O3), runs it, and, if a tile instruction faults, tries again with -fno-dse.
#
# LLAVA_EDGE_AMX_PROBE stands in for the answer (tests): 0 = no AMX, 1 = AMX as compiled,
# fno-dse = AMX with -fno-dse. CXX picks the compiler (as CMake's would).
set -uo pipefail
case "${LLAVA_EDGE_AMX_PROBE:-}" in
  "") ;;
  1) exit 0 ;;
  fno-dse) echo "-fno-dse"; exit 0 ;;
  *) echo "llama.cpp: AMX off (LLAVA_EDGE_AMX_PROBE=$LLAVA_EDGE_AMX_PROBE)" >&2; exit 1 ;;
esac
cxx="${CXX:-c++}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/probe.cpp" <<'CPP'
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
struct tile_config_t {
    uint8_t palette_id = 0, start_row = 0, reserved[14] = {0};
    uint16_t colsb[16] = {0};
    uint8_t rows[16] = {0};
};
__attribute__((noinline)) static void configure() {
    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    for (int t = 0; t < 8; t++) { tc.rows[t] = 16; tc.colsb[t] = 64; }
    _tile_loadconfig(&tc);
}
int main() {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 2;
    configure();
    alignas(64) static int8_t a[16 * 64], b[16 * 64];
    alignas(64) static int32_t c[16 * 16];
    for (int i = 0; i < 16 * 64; i++) { a[i] = 1; b[i] = 2; }
    _tile_zero(0);
    _tile_loadd(1, a, 64);
    _tile_loadd(2, b, 64);
    _tile_dpbssd(0, 1, 2);
    _tile_stored(0, c, 64);
    _tile_release();
    return c[0] == 128 && c[255] == 128 ? 0 : 3;  // 64 products of 1 x 2
}
CPP
try() {  # extra flags -> the probe's exit status (100: it did not compile)
  "$cxx" -O3 -mamx-tile -mamx-int8 "$@" "$tmp/probe.cpp" -o "$tmp/probe" 2> "$tmp/cc.log" || return 100
  "$tmp/probe" 2> /dev/null
}
try; rc=$?
if [ $rc = 0 ]; then
  echo "llama.cpp: AMX on (a tile multiply ran here)" >&2; exit 0
fi
# A dropped configuration faults on the next tile instruction: SIGILL, or SIGSEGV where
# what was left on the stack reads as a configuration (seen here 1 run in 8).
if [ $rc -gt 128 ]; then
  try -fno-dse; rc2=$?
  if [ $rc2 = 0 ]; then
    echo "llama.cpp: AMX on, built with -fno-dse ($cxx drops the tile configuration's stores at -O3: see scripts/amx_probe.sh)" >&2
    echo "-fno-dse"; exit 0
  fi
  [ $rc2 -le 128 ] && rc=$rc2
fi
case $rc in
  100) echo "llama.cpp: AMX off ($cxx cannot compile AMX code: $(tail -n1 "$tmp/cc.log"))" >&2 ;;
  2) echo "llama.cpp: AMX off (the kernel refused the AMX tile state: arch_prctl)" >&2 ;;
  3) echo "llama.cpp: AMX off (a tile multiply gave a wrong result)" >&2 ;;
  *) echo "llama.cpp: AMX off (a tile instruction died with status $rc, with and without -fno-dse: the CPU reports AMX that this machine does not allow)" >&2 ;;
esac
exit 1
