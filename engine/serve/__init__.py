"""`srtrt serve`: a local web page and an HTTP API over the per-file pipeline `srtrt run` uses.

Needs the optional extra (`pip install "srtrt[serve]"`: FastAPI, uvicorn, python-multipart); this
package imports none of them until `app.create_app` is called, so `import srtrt.engine.serve` is free.

- settings: what the server may do (bind, token, limits, retention), checked once at start;
- uploads: request bodies streamed to a per-job folder, size and pixel limits, names never paths;
- models: embedded models plus the model files found in `--models DIR`, and nothing else;
- warm: one backend per model configuration kept open between jobs;
- jobs: the bounded queue and the worker that runs one job at a time on the engine;
- security: bearer token, same-origin and Host checks on every route;
- clients: each client (a header or cookie id) sees and touches only its own jobs;
- schema: what the API takes and gives (the OpenAPI schema at /openapi.json);
- app: the routes; static/: the page; main: `srtrt serve` on uvicorn;
- replicas: `--ray`, the jobs run on a Ray Serve deployment (needs the `serve-ray` extra).
"""
