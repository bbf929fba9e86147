# BootTorrent developer entry points. Everything runs on Debian's own
# interpreter and python3-* packages, never a pip copy.
PYTHON := /usr/bin/python3
export PYTHONDONTWRITEBYTECODE := 1

# What the test suite, the demo and the benchmark need on a fresh Debian 12.
DEPS := python3-libtorrent python3-configobj python3-systemd python3-jinja2 \
	python3-debian python3-pytest python3-setuptools python3-all \
	python3-matplotlib dnsmasq-base opentracker ipxe busybox-static \
	kexec-tools kmod qemu-system-x86 ovmf shim-signed grub-efi-amd64-signed mtools xorriso mmdebstrap squashfs-tools zstd xz-utils cpio iproute2 \
	udpcast systemd lintian debhelper dh-python devscripts fakeroot \
	chromium chromium-driver python3-selenium \
	build-essential help2man man-db git curl

.PHONY: all deps test test-fast test-qemu bench demo deb clean

all: test

deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEPS) 2>/dev/null \
		| awk '$$1 == "ii" { print $$2 }' | sort | comm -13 - $$(printf '%s\n' $(DEPS) | sort > .deps.want; echo .deps.want)); \
	rm -f .deps.want; \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: deps
	$(PYTHON) -m pytest tests

# The unit tests of the pure functions: an answer in seconds.
test-fast: deps
	$(PYTHON) -m pytest tests/unit

test-qemu: deps
	$(PYTHON) -m pytest tests -m qemu

bench: deps
	$(PYTHON) -m bench --repeat 3
	$(PYTHON) -m bench --clients 1,2,4 --rate 10000 --size-mib 1024 --methods boottorrent,http --repeat 3 --out bench/line10g
	$(PYTHON) -m bench --clients 1,4 --rate 1000 --size-mib 256 --methods boottorrent,http --repeat 3 --out bench/line1g
	$(PYTHON) -m bench --clients 64,128 --rate 2 --methods boottorrent --out bench/scale
	$(PYTHON) -m bench --clients 16 --size-mib 256 --methods boottorrent,multicast --out bench/big
	$(PYTHON) -m bench.storm
	$(PYTHON) -m bench.bigimage
	$(PYTHON) -m bench.ram
	$(PYTHON) -m bench.page

demo: deps
	$(PYTHON) -m demo

deb: deps
	dpkg-buildpackage -us -uc -b

clean:
	rm -rf build .pytest_cache .cache *.egg-info
