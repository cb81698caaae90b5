"""Keys for the guest: X11 keysyms plus PC XT scancodes (US layout) for QEMU's key event.

RFB KeyEvent carries an X11 keysym, which QEMU turns into a scancode through its own
keymap (``-k``); QEMU's Extended Key Event carries the scancode itself, so the guest sees
exactly the key that was pressed whatever QEMU's keymap is. A scancode of 0 means "none":
the client then sends a plain KeyEvent. Key names follow Textual's (``enter``, ``pageup``,
``f5``) without importing it; combinations are ``ctrl+alt+delete`` style.
"""

from __future__ import annotations

from dataclasses import dataclass

# XT scancodes with the 0xE0 prefix are sent as 0x80 | code (QEMU Extended Key Event).
_E0 = 0x80


@dataclass(frozen=True, slots=True)
class Key:
    """One physical key: its keysym and XT scancode (0 when it has none)."""

    keysym: int
    scancode: int


SHIFT = Key(0xFFE1, 0x2A)
CONTROL = Key(0xFFE3, 0x1D)
ALT = Key(0xFFE9, 0x38)
SUPER = Key(0xFFEB, _E0 | 0x5B)

MODIFIERS: dict[str, Key] = {"shift": SHIFT, "ctrl": CONTROL, "alt": ALT, "super": SUPER}

#: Named (non-character) keys.
NAMED_KEYS: dict[str, Key] = {
    "escape": Key(0xFF1B, 0x01),
    "backspace": Key(0xFF08, 0x0E),
    "tab": Key(0xFF09, 0x0F),
    "enter": Key(0xFF0D, 0x1C),
    "space": Key(0x0020, 0x39),
    "capslock": Key(0xFFE5, 0x3A),
    "home": Key(0xFF50, _E0 | 0x47),
    "up": Key(0xFF52, _E0 | 0x48),
    "pageup": Key(0xFF55, _E0 | 0x49),
    "left": Key(0xFF51, _E0 | 0x4B),
    "right": Key(0xFF53, _E0 | 0x4D),
    "end": Key(0xFF57, _E0 | 0x4F),
    "down": Key(0xFF54, _E0 | 0x50),
    "pagedown": Key(0xFF56, _E0 | 0x51),
    "insert": Key(0xFF63, _E0 | 0x52),
    "delete": Key(0xFFFF, _E0 | 0x53),
    "sysrq": Key(0xFF61, _E0 | 0x37),
    **{f"f{n}": Key(0xFFBE + n - 1, 0x3B + n - 1) for n in range(1, 11)},
    "f11": Key(0xFFC8, 0x57),
    "f12": Key(0xFFC9, 0x58),
    **{name: key for name, key in MODIFIERS.items()},
}

# US layout: the unshifted character of each scancode, and its shifted twin.
_ROWS: tuple[tuple[int, str, str], ...] = (
    (0x02, "1234567890-=", "!@#$%^&*()_+"),
    (0x10, "qwertyuiop[]", "QWERTYUIOP{}"),
    (0x1E, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    (0x2B, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
)

_CHARS: dict[str, tuple[Key, bool]] = {" ": (NAMED_KEYS["space"], False)}
for _start, _plain, _shifted in _ROWS:
    for _i, (_p, _s) in enumerate(zip(_plain, _shifted, strict=True)):
        _CHARS[_p] = (Key(ord(_p), _start + _i), False)
        _CHARS[_s] = (Key(ord(_s), _start + _i), True)
_CHARS["\n"] = (NAMED_KEYS["enter"], False)
_CHARS["\r"] = (NAMED_KEYS["enter"], False)
_CHARS["\t"] = (NAMED_KEYS["tab"], False)


def char_key(char: str) -> tuple[Key, bool]:
    """The key typing ``char`` and whether Shift is held; non-US characters get a keysym only.

    X11 gives every Unicode character a keysym (``0x01000000 | code point``); QEMU maps it
    through its keymap, so such characters work only where that keymap has them.
    """
    if len(char) != 1:
        raise ValueError(f"not one character: {char!r}")
    if char in _CHARS:
        return _CHARS[char]
    code = ord(char)
    keysym = code if 0xA0 <= code <= 0xFF else 0x01000000 | code
    return Key(keysym, 0), False


def parse_combo(combo: str) -> list[Key]:
    """``"ctrl+alt+delete"`` -> the keys to press in order (modifiers first).

    Raises ``ValueError`` naming the part it does not know.
    """
    parts = combo.split("+") if combo != "+" else ["+"]
    keys: list[Key] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if not last:
            if part.lower() not in MODIFIERS:
                raise ValueError(f"{part!r} in {combo!r} is not a modifier (ctrl, shift, alt)")
            keys.append(MODIFIERS[part.lower()])
        elif part.lower() in NAMED_KEYS:
            keys.append(NAMED_KEYS[part.lower()])
        elif len(part) == 1:
            key, shifted = char_key(part)
            if shifted and SHIFT not in keys:
                keys.append(SHIFT)
            keys.append(key)
        else:
            raise ValueError(f"unknown key {part!r} in {combo!r}")
    return keys


#: Terminal key names (Textual's) that differ from ours.
_TERMINAL_NAMES = {"ctrl+space": "ctrl+@"}


def keys_for_terminal_key(name: str, character: str | None) -> list[Key] | None:
    """What a key pressed in the local terminal means for the guest (None: nothing).

    ``name`` is the terminal's key name (``"enter"``, ``"ctrl+c"``, ``"shift+up"``) and
    ``character`` the text it produced, if any; printable characters are typed as such
    (Shift added where the US layout needs it), everything else goes by name.
    """
    name = _TERMINAL_NAMES.get(name, name)
    if character and len(character) == 1 and character.isprintable() and "ctrl+" not in name:
        key, shifted = char_key(character)
        return [SHIFT, key] if shifted else [key]
    parts = name.split("+")
    base = parts[-1]
    if len(base) > 1 and base not in NAMED_KEYS:
        # Textual names punctuation ("right_square_bracket"); with a modifier, use the
        # character those names stand for when we know it.
        base = _PUNCTUATION.get(base, base)
    try:
        return parse_combo("+".join([*parts[:-1], base]))
    except ValueError:
        return None


_PUNCTUATION = {
    "right_square_bracket": "]",
    "left_square_bracket": "[",
    "backslash": "\\",
    "minus": "-",
    "equals_sign": "=",
    "slash": "/",
    "full_stop": ".",
    "comma": ",",
    "semicolon": ";",
    "apostrophe": "'",
    "grave_accent": "`",
}
