"""runtime: filesystems and processes.

Layer unpacking, overlay/copy snapshots, layer diffs, the namespace sandbox, cgroups and
``run_image``. May import ``registry`` (model, store, compression); otherwise stdlib only
(ctypes for the syscalls Python 3.11 lacks). Nothing here imports click or prints.
"""
