"""Refuse weak passwords: guessing is offline, so the password is the whole defence."""

from .errors import WeakPassword

MIN_SCORE = 3          # zxcvbn: 3 = "safely unguessable: moderate protection from offline attack"


def check_password(password: bytes) -> None:
    from zxcvbn import zxcvbn          # 40 ms of dictionaries: only for commands that set a password

    text = password.decode("utf-8", "replace")
    result = zxcvbn(text[:100])        # zxcvbn is quadratic in length; 100 chars decide it
    if result["score"] >= MIN_SCORE:
        return
    feedback = result["feedback"]
    why = feedback.get("warning") or "easy to guess"
    hint = (feedback.get("suggestions") or ["Use a longer passphrase of several uncommon words."])[0]
    crack = result["crack_times_display"]["offline_slow_hashing_1e4_per_second"]
    raise WeakPassword(
        f"password too weak (strength {result['score']}/4, guessed offline in about {crack}): "
        f"{why.rstrip('.')}. {hint} Or pass --allow-weak-password."
    )
