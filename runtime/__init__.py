"""runtime: filesystems and processes: layer unpacking, overlay/copy snapshots, layer diffs, the
namespace sandbox, cgroups, ``run_image``, container lifecycle and networking. May import
``registry`` (never registry.remote at module scope); otherwise stdlib only (ctypes in
runtime._syscalls). Nothing here imports click or prints."""
