#!/bin/bash
# A real S3 server for tests: Ceph's RADOS Gateway from Debian's packages, one monitor and one
# in-memory OSD, on 127.0.0.1 only, without systemd and without installing anything system-wide
# (the packages are unpacked under $RGW_ROOT). Method and measurements: shared/research/s3-fixture.md.
#   RGW_ROOT=dir RGW_DIR=dir RGW_PORT=port RGW_MON_PORT=port [RGW_BIND=address] tests/s3/rgw.sh
# RGW_BIND (default 127.0.0.1): where the gateway listens, e.g. the test hosts' bridge address.
# Prints nothing on success; the cluster's PIDs are in $RGW_DIR/{mon,osd,rgw}.pid.
set -euo pipefail
ROOT=${RGW_ROOT:?}; DIR=${RGW_DIR:?}; PORT=${RGW_PORT:?}; MON=${RGW_MON_PORT:?}; BIND=${RGW_BIND:-127.0.0.1}
if [ ! -x "$ROOT/usr/bin/radosgw" ]; then
  mkdir -p "$ROOT.debs" "$ROOT"
  apt-get install -qq -y --download-only --no-install-recommends -o Dir::Cache::archives="$ROOT.debs" \
    ceph-mon ceph-osd radosgw ceph-common ceph-base >/dev/null
  for deb in "$ROOT".debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
LIB=$ROOT/usr/lib/$(uname -m)-linux-gnu
export PATH=$ROOT/usr/bin:$PATH LD_LIBRARY_PATH=$ROOT/lib/$(uname -m)-linux-gnu:$LIB:$LIB/ceph
export PYTHONPATH=$ROOT/usr/lib/python3/dist-packages
rm -rf "$DIR"; mkdir -p "$DIR"/{run,log,rgw,mon.a,osd.0}
FSID=$(python3 -c 'import uuid; print(uuid.uuid4())'); CONF=(-c "$DIR/ceph.conf")
cat > "$DIR/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $DIR/run
log file = $DIR/log/\$name.log
plugin dir = $LIB/ceph
erasure code dir = $LIB/ceph/erasure-code
osd class dir = $LIB/rados-classes
mon data = $DIR/mon.\$id
osd data = $DIR/osd.\$id
osd objectstore = memstore
osd crush update on start = false
osd class update on start = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
mon allow pool size one = true
mon max pg per osd = 1000
mon data avail crit = 0
paxos propose interval = 0.05
rgw data = $DIR/rgw
rgw frontends = beast endpoint=$BIND:$PORT tcp_nodelay=1
EOF
# Monitor commands through librados' Python binding: with auth off, the OSD's own start-up
# commands sometimes carry a zeroed fsid and hang, so the script creates the OSD itself.
cat > "$DIR/mon_command.py" <<'EOF'
import json, sys, time
import rados
cluster = rados.Rados(conffile=sys.argv[1]); cluster.connect()
def command(text):
    for _ in range(100):
        code, out, err = cluster.mon_command(text, b"")
        if code == 0:
            return out.decode()
        time.sleep(0.1)
    sys.exit(err)
for text in sys.argv[2:]:
    if text == "wait-for-osd":
        while json.loads(command('{"prefix":"osd stat","format":"json"}'))["num_up_osds"] < 1:
            time.sleep(0.2)
    else:
        print(command(text), end="")
EOF
MONC=(/usr/bin/python3 "$DIR/mon_command.py" "$DIR/ceph.conf")
trap 'for p in rgw osd mon; do [ -f "$DIR/$p.pid" ] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null; done' ERR
monmaptool --create --addv a "[v1:127.0.0.1:$MON]" --fsid "$FSID" "$DIR/monmap" >/dev/null
ceph-mon "${CONF[@]}" -i a --mkfs --monmap "$DIR/monmap"
ceph-mon "${CONF[@]}" -i a -f >"$DIR/log/mon.out" 2>&1 & echo $! >"$DIR/mon.pid"
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())'); ID=$("${MONC[@]}" "{\"prefix\":\"osd new\",\"uuid\":\"$UUID\"}")
ceph-osd "${CONF[@]}" -i "$ID" --mkfs --osd-uuid "$UUID" >"$DIR/log/mkfs.out" 2>&1
ceph-osd "${CONF[@]}" -i "$ID" -f >"$DIR/log/osd.out" 2>&1 & echo $! >"$DIR/osd.pid"
COMMANDS=("{\"prefix\":\"osd crush add\",\"id\":$ID,\"weight\":1.0,\"args\":[\"root=default\",\"host=localhost\"]}")
for pool in .rgw.root default.rgw.{log,control,meta,buckets.index,buckets.data,buckets.non-ec}; do
  COMMANDS+=("{\"prefix\":\"osd pool create\",\"pool\":\"$pool\",\"pg_num\":8}"
             "{\"prefix\":\"osd pool application enable\",\"pool\":\"$pool\",\"app\":\"rgw\"}")
done
"${MONC[@]}" "${COMMANDS[@]}" wait-for-osd >/dev/null
radosgw "${CONF[@]}" -n client.rgw.a -f >"$DIR/log/rgw.out" 2>&1 & echo $! >"$DIR/rgw.pid"
python3 -c "import sys, time, urllib.request
for _ in range(300):
    try: urllib.request.urlopen(sys.argv[1], timeout=1); break
    except OSError: time.sleep(0.2)" "http://$BIND:$PORT/"
radosgw-admin "${CONF[@]}" user create --uid=test --display-name=test --access-key=accessKey1 \
  --secret-key=verySecretKey1 >/dev/null
