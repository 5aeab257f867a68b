# etcd for the compose cluster, from the same base: the binary of Debian's etcd-server
# (scripts/docker-images.sh copies it into the build context). Elsewhere, any etcd 3.4+ image
# does (quay.io/coreos/etcd).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY etcd /usr/local/bin/etcd
RUN mkdir -p /var/lib/etcd && chown 10001:10001 /var/lib/etcd
USER 10001:10001
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
