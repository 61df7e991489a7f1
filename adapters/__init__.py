"""Platform adapters: one module per platform, the contract in :mod:`adapters.base`."""
