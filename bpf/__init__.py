"""The BPF programs (C) and the record they share with Python.

This folder installs as the package ``tracer.bpf`` so that the programs travel with
the Python that loads them: ``importlib.resources.files("tracer.bpf")`` is this
folder in a checkout and ``tracer/bpf/`` in an installed package.
"""
