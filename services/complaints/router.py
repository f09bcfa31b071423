"""HTTP edge of the complaints service (walking skeleton: no resources yet)."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["complaints"])
