"""Events and webhooks (SPEC §6): the outbox the lifecycle writes is fanned out to webhook
subscriptions and delivered, signed, with retries.

Pure: ``policy`` (what follows an attempt, which events reach whom), ``signing`` (secrets, both
signature schemes, headers). Store: ``fanout`` (outbox -> delivery rows, exactly once),
``store`` (claims under leases, wake times, release, retention), ``results`` (attempt log,
failure counts, auto-disable). I/O: ``http11`` and ``sender`` (the POST, through the SSRF
policy), ``deliverer`` (the loop the app runs), ``wakeup`` (woken by committed outbox rows).
Use cases for the API and the CLI: ``service``, ``views``.
"""
