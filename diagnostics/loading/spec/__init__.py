"""JSON architecture specs -> LoadedModel: strict parsing, validation against the allowlist,
a shape check on the meta device, then the build.

The entry point is :func:`diagnostics.loading.spec.loader.load_spec`.
"""
