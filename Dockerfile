# natkeep container image.
#
# With network access (pulls golang and distroless; the default target):
#
#   docker build -t natkeep:dev \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ...
# (the builder stage runs natively and cross-compiles; CGO is off).
#
# Offline, from a binary built outside Docker (pulls nothing: BuildKit builds
# only the stages the target needs, and runtime-local needs none of the
# others):
#
#   CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o out/natkeep ./cmd/natkeep
#   DOCKER_BUILDKIT=1 docker build --target runtime-local -t natkeep:dev .

ARG VERSION=dev
ARG COMMIT=unknown

# ---- build stage ------------------------------------------------------------
FROM --platform=$BUILDPLATFORM golang:1.26 AS builder
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when go.mod or
# go.sum change, not on every source edit. The root module is the binary's
# alone (deploy/ is a module of its own, excluded by .dockerignore), so this
# downloads only what natkeep links.
COPY go.mod go.sum ./
RUN go mod download

COPY . .

ARG TARGETOS
ARG TARGETARCH
ARG VERSION
ARG COMMIT
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} GOFLAGS=-buildvcs=false \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/natkeep ./cmd/natkeep

# ---- runtime-local: the binary from the build context, on scratch -----------
# For machines without registry access (CI): nothing to pull. The binary must
# be static (CGO_ENABLED=0) and built for the image's platform. It has no
# /etc/passwd: natkeep needs no user name, and USER is numeric.
FROM scratch AS runtime-local

ARG VERSION
ARG COMMIT
LABEL org.opencontainers.image.title="natkeep" \
      org.opencontainers.image.description="Sidecar proxy that keeps NAT and firewall mappings alive: UDP relay with heartbeats on idle flows, TCP proxy with keepalive and TCP_USER_TIMEOUT" \
      org.opencontainers.image.source="https://github.com/natkeep/natkeep" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"

COPY out/natkeep /natkeep

USER 65532:65532

ENV NATKEEP_LOG_FORMAT=json

EXPOSE 9299/tcp

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/natkeep", "healthcheck"]

ENTRYPOINT ["/natkeep"]

# ---- runtime stage (default) ------------------------------------------------
# Static, distroless, no shell, no package manager; runs as uid/gid 65532.
# Keep its metadata identical to runtime-local's (deploy tests check that).
FROM gcr.io/distroless/static-debian12:nonroot AS runtime

ARG VERSION
ARG COMMIT
LABEL org.opencontainers.image.title="natkeep" \
      org.opencontainers.image.description="Sidecar proxy that keeps NAT and firewall mappings alive: UDP relay with heartbeats on idle flows, TCP proxy with keepalive and TCP_USER_TIMEOUT" \
      org.opencontainers.image.source="https://github.com/natkeep/natkeep" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"

COPY --from=builder /out/natkeep /natkeep

# Numeric, so that Kubernetes' runAsNonRoot can verify it without runAsUser.
USER 65532:65532

ENV NATKEEP_LOG_FORMAT=json

# Admin HTTP server (NATKEEP_ADMIN_ADDR): /metrics, /healthz, /readyz.
# Route listeners are configured by NATKEEP_ROUTES; publish them at run time.
EXPOSE 9299/tcp

# No shell or curl in the image: natkeep probes its own /readyz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/natkeep", "healthcheck"]

ENTRYPOINT ["/natkeep"]
