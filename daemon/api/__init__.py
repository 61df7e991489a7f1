"""HTTP surface: operations endpoints now, ``/api/v1`` routers (one per resource) next."""
