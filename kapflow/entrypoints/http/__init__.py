"""The HTTP runtime of `kapflow serve`: REST API, live stream, FHIR tasks, metrics, dashboard.

`app.create_app` assembles it; `server.run` serves it. Every write goes through the single
writer (`kapflow.service.writer`) into the IngestService, like every other runtime.
"""
