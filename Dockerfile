# The internet-side forwarder (`wonders forward`), nothing else: the GPU-side proxy
# (mitmproxy) is not installed. Build: docker build -t wonders-forwarder .
# Run:  docker run -d --name wonders-forwarder \
#         -v "$PWD/forwarder:/etc/wonders:ro" -v wonders-state:/var/lib/wonders \
#         -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY wonders-forwarder
# /etc/wonders holds forwarder.toml, the key, the policy and the client bundles; the key
# must be readable by uid 10001 (chown 10001 fw1.key) or run with --user.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The forwarder's dependencies: pyproject.toml's, less mitmproxy (tests/test_deploy.py
# checks that this list and pyproject.toml agree).
RUN python -m venv /opt/wonders \
    && /opt/wonders/bin/pip install --no-cache-dir --no-deps . \
    && /opt/wonders/bin/pip install --no-cache-dir \
        "cryptography>=42,<44.1" "aiobotocore>=2.15" "click>=8.1" "idna>=3" \
        "prometheus-client>=0.20" "asyncinotify>=4.0; sys_platform == 'linux'"

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/wonders --create-home wonders
COPY --from=build /opt/wonders /opt/wonders
# XDG_STATE_HOME puts the audit spool in /var/lib/wonders, the state volume.
ENV PATH=/opt/wonders/bin:$PATH XDG_STATE_HOME=/var/lib PYTHONUNBUFFERED=1
USER wonders
WORKDIR /var/lib/wonders
VOLUME ["/var/lib/wonders"]
EXPOSE 9464
# Healthy while this forwarder's own signed heartbeat in the mailbox is fresh.
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["wonders", "status", "--config", "/etc/wonders/forwarder.toml"]
ENTRYPOINT ["wonders", "forward"]
CMD ["--config", "/etc/wonders/forwarder.toml"]
