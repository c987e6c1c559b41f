# syntax=docker/dockerfile:1
# The base image is pinned by patch version and by the digest of its multi-architecture
# index, in both stages: a rebuild gets the same Python and Debian, never a re-pushed
# tag. Both lines change together; docs/operations.md says how to refresh the digest.
# Build stage: make a wheel of the bridge and its dependencies.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# bridge/shipped/ links to these: the wheel carries them for `voxys-bridge demo`.
COPY config ./config
COPY examples ./examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the wheels, a non-root user and the config path layout.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_STORAGE_URL=sqlite:////data/bridge.db \
    VOXYS_BRIDGE_CONFIG=/etc/voxys-bridge/bridge.yaml
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data /etc/voxys-bridge \
    && chown bridge /data
COPY config/ /etc/voxys-bridge/
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["voxys-bridge", "healthcheck"]
ENTRYPOINT ["voxys-bridge"]
CMD ["serve"]
