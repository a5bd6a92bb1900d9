"""Guest image recipe: a guest kernel plus a tiny busybox initramfs running the agent.

Only the QEMU backend boots a guest, so the image lives here. The kernel is Debian's
by default, or ours (``guest_kernel="harness"``, ``$SMM_HARNESS_GUEST_KERNEL``;
:mod:`.kernel`: Debian's ``linux`` source package built with only what the scenarios
use, ``images/kernel.config``). ``build_image()`` fetches Debian's
``linux-image-6.1.0-*-amd64`` (the package ``linux-image-amd64`` depends on) when it
boots Debian's kernel, and ``busybox-static``, with ``apt-get download``, unpacks them
with ``dpkg-deb -x`` into a scratch directory (nothing is installed) and writes a gzip'd
newc initramfs (pure Python writer) holding busybox with its applet links, ``/init`` and
``/agent.sh`` (from ``images/``) and the kernel modules the harness needs (Debian's
kernel: ``msr.ko`` and its dependencies; ours has ``msr`` built in).

Modules, one job each: ``apt`` (packages through apt and dpkg-deb), ``kernel`` (the
harness kernel's source, configuration, build and cache), ``modules`` (kernel
modules and their dependencies), ``initramfs`` (what the guest's root holds), ``build``
(the cache and the build), ``cli`` (``python -m harness images build``). The kernel
command line is :data:`harness.qemu.cmdline.KERNEL_CMDLINE`.
"""
from .build import BUILD_DIR, ImagePaths, build_image, image_key

__all__ = ["BUILD_DIR", "ImagePaths", "build_image", "image_key"]
