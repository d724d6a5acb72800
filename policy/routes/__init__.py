"""The policy service's HTTP routes, one ``APIRouter`` a feature: ``policies`` (check, put, read,
delete), ``decisions`` (a backend per call site for a frame), ``feedback`` (what was learned, or
that nothing will be), ``reuse`` (the reuse gate of cameras) and ``operations`` (metrics, health).
Each route parses, calls ``PolicyService`` and lets the app map its errors."""
