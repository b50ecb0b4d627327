"""BentoML service over the cosa_sdk inference API (`cosa serve`); imports the SDK only, never training code.

Modules: `service` (the two BentoML services), `settings` (COSA_* environment variables), `guard`
(ASGI upload checks), `uploads` (bytes -> checked RGB image), `render` (PNG/JPEG/JSON answers),
`page` (the upload page at /), `docs` (the Swagger UI page at /docs), `cli` (`cosa serve`),
`launcher` (run `cosa serve` in a child process, for tests and benchmarks).
Importing this package imports none of them, so `import cosa_sdk.serving` does not need bentoml.
"""
