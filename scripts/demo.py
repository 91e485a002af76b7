"""`make demo`: the whole job on a demo vault under ./demo, shown step by step.

A chat app's backup (an SQLite message database and a media folder) is written
with ordinary tools into the mount; the vault folder beside it holds only
ciphertext; after unmount the backup is read back read-only and restored
without FUSE.
"""

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys

DEMO = os.path.abspath("demo")
VAULT = os.path.join(DEMO, "vault")
MOUNT = os.path.join(DEMO, "ChatBackup")
KEY = os.path.join(DEMO, "demo-key.txt")
E2EFS = [sys.executable, "-m", "e2efs"]
SECRET_MESSAGE = "meet me at the old lighthouse at nine"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def sh(*cmd, check=True, show=True, **kw):
    shown = " ".join(shlex.quote(os.path.relpath(c) if c.startswith(DEMO) else c) for c in map(str, cmd))
    if show:
        print(f"$ {shown.replace(shlex.join(E2EFS), 'e2efs')}")
    done = subprocess.run(list(map(str, cmd)), text=True, capture_output=True, **kw)
    if done.stdout.strip() and show:
        print(done.stdout.rstrip())
    if check and done.returncode != 0:
        sys.exit(f"demo failed: {shown}: {done.stderr.strip()}")
    return done


def clean_previous_run() -> None:
    if os.path.ismount(MOUNT) or os.path.exists(MOUNT) and not os.access(MOUNT, os.R_OK):
        subprocess.run(["fusermount3", "-u", "-z", MOUNT], capture_output=True)
    shutil.rmtree(DEMO, ignore_errors=True)
    os.makedirs(MOUNT)


def write_chat_backup() -> None:
    db = sqlite3.connect(os.path.join(MOUNT, "msgstore.db"))
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, chat TEXT, sender TEXT, body TEXT, ts INTEGER)")
    with db:
        db.executemany("INSERT INTO messages (chat, sender, body, ts) VALUES (?, ?, ?, ?)",
                       [("family", "mum", f"message {i}", 1_763_000_000 + i) for i in range(999)])
        db.execute("INSERT INTO messages (chat, sender, body, ts) VALUES ('alex', 'alex', ?, 1763001000)",
                   (SECRET_MESSAGE,))
    db.close()
    media = os.path.join(DEMO, "camera")
    os.makedirs(media)
    for i in range(5):
        with open(os.path.join(media, f"IMG-2026112{i}-WA000{i}.jpg"), "wb") as f:
            f.write(os.urandom(200_000 + i * 1000))
    sh("mkdir", "-p", os.path.join(MOUNT, "Media", "WhatsApp Images"))
    sh("bash", "-c", f"cp {media}/*.jpg '{MOUNT}/Media/WhatsApp Images/'")


def main() -> None:
    clean_previous_run()
    step("1. Create a vault protected by a generated 64-digit key")
    out = sh(*E2EFS, "init", "--key-only", "--json", VAULT, show=False)
    key = json.loads(out.stdout)["recovery_key"]
    with open(os.open(KEY, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(key + "\n")
    print(f"$ e2efs init --key-only demo/vault\n  64-digit key: {key}\n  (kept in demo/demo-key.txt for this demo only;"
          " keep a real key off the computer)")
    sh(*E2EFS, "info", VAULT)

    step("2. Mount it and let ordinary tools write a chat backup into it")
    sh(*E2EFS, "mount", VAULT, MOUNT, "--key-file", KEY)
    write_chat_backup()
    sh("ls", "-la", MOUNT, os.path.join(MOUNT, "Media", "WhatsApp Images"))

    step("3. What the cloud client syncs: ciphertext names and contents only")
    print("$ cd demo/vault && find . -maxdepth 3")
    print(sh("find", ".", "-maxdepth", "3", cwd=VAULT, show=False).stdout.rstrip())
    grep = sh("grep", "-rl", "-e", SECRET_MESSAGE, "-e", "msgstore", "-e", "WhatsApp", VAULT, check=False)
    print("grep for the secret message and the file names in the vault: "
          + ("FOUND (this is a bug!)" if grep.returncode == 0 else "nothing found"))
    if grep.returncode == 0:
        sys.exit(1)

    step("4. Lock it, then reopen read-only and read the backup back")
    sh(*E2EFS, "unmount", MOUNT)
    sh(*E2EFS, "mount", "--read-only", VAULT, MOUNT, "--key-file", KEY)
    db = sqlite3.connect(f"file:{os.path.join(MOUNT, 'msgstore.db')}?mode=ro", uri=True)
    count, = db.execute("SELECT count(*) FROM messages").fetchone()
    body, = db.execute("SELECT body FROM messages WHERE chat='alex'").fetchone()
    ok, = db.execute("PRAGMA integrity_check").fetchone()
    db.close()
    print(f"messages: {count}; alex wrote: {body!r}; integrity_check: {ok}")
    denied = sh("touch", os.path.join(MOUNT, "new-file"), check=False)
    print("writing to the read-only mount: " + (denied.stderr.strip() or "allowed (this is a bug!)"))
    sh(*E2EFS, "unmount", MOUNT)

    step("5. Restore on a 'new machine' without FUSE, and check every block")
    sh(*E2EFS, "export", VAULT, os.path.join(DEMO, "restored"), "--key-file", KEY)
    sh(*E2EFS, "fsck", VAULT, "--key-file", KEY)
    sh("cmp", os.path.join(DEMO, "camera", "IMG-20261120-WA0000.jpg"),
       os.path.join(DEMO, "restored", "Media", "WhatsApp Images", "IMG-20261120-WA0000.jpg"))
    print("\nDemo done: the vault in demo/vault held only ciphertext, and everything came back.")


if __name__ == "__main__":
    main()
