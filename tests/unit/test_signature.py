"""Who signed a kernel (signature.py), read from Debian's real kernel and
from the same kernel with its signature taken off."""

from __future__ import annotations

import pytest

from boottorrent.signature import kernel_signer
from lab.kernel import unsigned_vmlinuz, vmlinuz


def test_debians_kernel_names_its_signer():
    assert kernel_signer(vmlinuz()) == "Debian Secure Boot Signer 2022 - linux"


def test_a_kernel_without_its_signature_has_no_signer():
    assert kernel_signer(unsigned_vmlinuz()) == ""


def test_a_file_that_is_no_pe_file_is_refused(tmp_path):
    path = tmp_path / "initrd"
    path.write_bytes(b"070701" + bytes(5000))
    with pytest.raises(ValueError, match="not a PE file"):
        kernel_signer(path)
