"""The router's HTTP routes, one ``APIRouter`` a feature: ``programs`` (register, read, delete,
policy view, evaluation), ``answers`` (POST /answer), ``streams`` (cameras and videos answered as
they come, their events), ``feedback`` (labels) and ``operations`` (dead letters, metrics, health).
Each route parses, calls ``RouterService`` (or the stream manager) and lets the app map its errors."""
