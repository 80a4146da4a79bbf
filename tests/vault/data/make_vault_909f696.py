"""How vault-909f696.tar.gz was made (kept for the record; not run by the tests).

A vault written by callvault at commit 909f696 (before a call's customer number
had its own key: it was sealed under the call's data key). Made with that
commit's engine/ and extensions:

    git archive 909f696 engine | tar -x -C OLD   # plus that commit's built _*.so
    PYTHONPATH=OLD/engine:clients/python python tests/vault/data/make_vault_909f696.py
    (then RocksDB's LOG removed, tar -czf ... vault)
"""

from pathlib import Path

from callvault.media import sample
from callvault.vault import Vault

p = Path("/tmp/oldv/call.pcap")
agent, customer = sample.dialogue(1.0)
sample.write_capture(
    p,
    [
        (agent, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
        (customer, sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002))),
    ],
)
v = Vault.open(Path("/tmp/oldv/vault"))
v.import_call("c1", [str(p)], customer_number="+15551234567")
v.close()
