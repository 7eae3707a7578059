# syntax=docker/dockerfile:1
# escape=\
ARG BASE=busybox
FROM ${BASE} AS build
ENV PATH=/usr/local/bin:$PATH \
    GREETING="hello world"
WORKDIR /src
COPY --chmod=0644 <<EOF /src/site.txt
served by berth
EOF
RUN --mount=type=cache,target=/cache <<-SCRIPT
	set -e
	echo "$GREETING" > /src/greeting
	SCRIPT
FROM scratch
COPY --from=build /bin/busybox /bin/busybox
COPY --from=build /src/ /www/
LABEL org.opencontainers.image.title="site" version=1
EXPOSE 80/tcp
USER 1000:1000
HEALTHCHECK --interval=5s --retries=3 CMD ["/bin/busybox", "wget", "-q", "-O-", "http://localhost/"]
STOPSIGNAL SIGTERM
VOLUME ["/data"]
ONBUILD COPY . /app
ENTRYPOINT ["/bin/busybox"]
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
