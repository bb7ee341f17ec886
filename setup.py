"""The package's one compiled module; everything else about the package is in pyproject.toml. (setuptools' own
pyproject form of ext-modules is still marked experimental, so the extension is declared here.)"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "services.renderer._paste",
    ["services/renderer/_paste.c"],
    # Python's stable ABI (3.11 added the buffer protocol to it): one build, `_paste.abi3.so`, imports on every
    # CPython from 3.11 on, so a module built here also loads beside another machine's Python (tools/gpu_kit.py)
    py_limited_api=True,
    define_macros=[("Py_LIMITED_API", "0x030B0000")],
    # -ffp-contract=off is part of the kernel's correctness: without it GCC fuses multiply-adds on x86-64-v3 and
    # the bytes differ from OpenCV's (services/renderer/_paste.c)
    extra_compile_args=["-O3", "-ffp-contract=off", "-Wall", "-Werror"],
)], options={"bdist_wheel": {"py_limited_api": "cp311"}})
