# SPDX-License-Identifier: GPL-2.0
# rmirror: top-level entry points. `make check` and `make demo` work on a fresh Debian 12 machine:
# they install what is missing, build the test kernel (cached in $(RMIRROR_CACHE)), the module and
# the tool, boot two QEMU VMs and run the tests / the demo.
#
#   make                 build rmirror.ko against the test kernel (built and cached on first use)
#   make KDIR=/path      build rmirror.ko against another Rust-enabled kernel build tree
#   make tools           build rmirrorctl and rmirror-check
#   make check           everything: host tests, then the VM tests
#   make demo            two VMs, a mirrored ext4 file seen on the secondary's disk
#   make bench           rmirror against the raw disk and DRBD 8.4 (fio), two VMs and one, on a
#                        kernel without debugging (built and cached on first use); table,
#                        bench-results/bench.json and bench.png (BENCH_ARGS="--runtime 20" ...)
#   make bench-smoke     a one-minute version of it that only checks every figure is produced
#   make fuzz            run the cargo-fuzz targets of the core for a short while
#
# Kbuild reads ./Kbuild (not this file) when the kernel's make descends into this directory.

RMIRROR_CACHE ?= /var/cache/rmirror
export RMIRROR_CACHE
SHELL := /bin/bash
TOP := $(CURDIR)
CARGO ?= cargo
PYTHON ?= /usr/bin/python3
FUZZ_SECONDS ?= 30
# The kernel's make needs the Debian Rust toolchain and our bindgen first on PATH.
KENV = source $(TOP)/scripts/env.sh &&
KDIR ?= $(RMIRROR_CACHE)/kernel/current

TOOL := rust/target/release/rmirrorctl
MODULE := rmirror.ko

.PHONY: all module tools host-setup kernel rootfs test-host test-vm check demo bench bench-smoke bench-kernel \
	bench-module fuzz clean

all: module

host-setup:
	scripts/setup-host.sh

# The default KDIR is the cached test kernel: make sure it is built (a no-op once cached).
kernel: host-setup
	@if [ "$(KDIR)" = "$(RMIRROR_CACHE)/kernel/current" ]; then scripts/kernel.sh >/dev/null; fi

module: kernel
	$(KENV) $(MAKE) -C $(KDIR) M=$(TOP) modules
	@ls -l $(MODULE)

tools:
	cd rust && $(CARGO) build --release -p rmirrorctl

rootfs: host-setup
	scripts/rootfs.sh >/dev/null

test-host:
	cd rust && $(CARGO) test --workspace
	cd rust && $(CARGO) clippy --workspace --all-targets -- -D warnings

VM_ENV = RMIRROR_KERNEL=$(KDIR)/arch/x86/boot/bzImage RMIRROR_ROOTFS=$$(scripts/rootfs.sh) \
	RMIRROR_MODULE=$(TOP)/$(MODULE) RMIRROR_TOOL=$(TOP)/$(TOOL)

test-vm: module tools rootfs
	$(VM_ENV) $(PYTHON) -m pytest -v --durations=30 tests/vm

check: host-setup
	$(MAKE) test-host
	$(MAKE) test-vm
	$(MAKE) bench-smoke

demo: module tools rootfs
	$(VM_ENV) $(PYTHON) scripts/vm.py demo

# Benchmarks are not tests: no thresholds, see Documentation/bench.rst. `make bench` runs on the
# bench kernel (the test kernel without lockdep, KASAN, kmemleak..., scripts/kernel-bench.config) with
# rmirror.ko and drbd.ko built for it; BENCH_KERNEL=test runs it on the debug test kernel instead.
# The smoke in `make check` uses the test kernel (no second kernel build in the check's budget).
BENCH_OUT ?= bench-results
BENCH_ARGS ?=
BENCH_KERNEL ?= bench
ifeq ($(BENCH_KERNEL),test)
BENCH_KDIR := $(KDIR)
BENCH_DEPS := module
BENCH_MOD := $(TOP)/$(MODULE)
else
BENCH_KDIR := $(RMIRROR_CACHE)/kernel/bench
BENCH_DEPS := bench-module
BENCH_MOD := $(TOP)/build/bench/rmirror.ko
endif

bench-kernel: host-setup
	RMIRROR_KERNEL_VARIANT=bench scripts/kernel.sh >/dev/null

# The module's sources copied to build/bench and built there (the in-place build is the test kernel's).
bench-module: bench-kernel
	rm -rf build/bench && mkdir -p build/bench/rust
	cp Kbuild build/bench/ && cp -r rust/core rust/driver build/bench/rust/
	rm -rf build/bench/rust/core/target build/bench/rust/core/fuzz
	find build/bench \( -name '*.o' -o -name '.*.cmd' -o -name '*.ko' -o -name '*.rmeta' \) -delete
	$(KENV) $(MAKE) -C $(BENCH_KDIR) M=$(TOP)/build/bench modules
	@ls -l build/bench/rmirror.ko

bench: $(BENCH_DEPS) tools rootfs
	RMIRROR_KERNEL=$(BENCH_KDIR)/arch/x86/boot/bzImage RMIRROR_ROOTFS=$$(scripts/rootfs.sh) \
	RMIRROR_MODULE=$(BENCH_MOD) RMIRROR_TOOL=$(TOP)/$(TOOL) \
	$(PYTHON) scripts/bench.py run --kdir $(BENCH_KDIR) --out $(BENCH_OUT) $(BENCH_ARGS)

bench-smoke: module tools rootfs
	$(VM_ENV) $(PYTHON) scripts/bench.py run --smoke --kdir $(KDIR) --out $(BENCH_OUT)/smoke $(BENCH_ARGS)

fuzz:
	$(CARGO) install --locked cargo-fuzz
	cd rust/core/fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	-$(KENV) $(MAKE) -C $(KDIR) M=$(TOP) clean
	cd rust && $(CARGO) clean
	rm -rf build/bench
