"""The dispatcher: claiming due posts under leases, the publish pipeline, reconciliation."""
