RUN echo too early
FROM busybox AS base
COPY --form=base /a /b
FORM x
CMD echo shell form
CMD ["json"]
FROM base AS base
COPY --from=5 /a /b
SHELL /bin/bash -c
