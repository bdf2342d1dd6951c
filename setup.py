"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the service decodes every
body in Python (service/protocols/native.py falls back), only slower for large requests.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.protocols._records",
            sources=["service/protocols/_records.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
