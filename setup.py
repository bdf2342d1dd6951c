"""Only the optional C accelerators live here; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the Python code they speed up
runs instead (service/protocols/native.py and service/scoring/columns.py fall back), only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.protocols._records",
            sources=["service/protocols/_records.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "service.scoring._levels",
            sources=["service/scoring/_levels.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        ),
    ]
)
