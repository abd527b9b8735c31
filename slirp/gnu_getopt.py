"""A faithful model of glibc's ``getopt_long`` (permuting mode).

slirp4netns is parsed by getopt_long, and its callers depend on the details:
options and positionals interleave, ``--`` ends options, long options take
``--opt=v`` or ``--opt v`` and any unambiguous prefix (an exact name wins over
longer names it prefixes), short options bundle (``-c6``) and take attached
values (``-e10``), an option's argument is the next word even if it starts with
``-``.  Error texts are glibc's, printed by the caller:

    PROG: unrecognized option '--foo'
    PROG: option '--c' is ambiguous; possibilities: '--configure' '--cidr'
    PROG: option '--configure' doesn't allow an argument
    PROG: option '--mtu' requires an argument
    PROG: invalid option -- 'x'
    PROG: option requires an argument -- 'e'

``POSIXLY_CORRECT`` is not read (``require_order`` gives its behaviour to
subcommands that run a command) and optional arguments are not modelled (slirp4netns uses
neither).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LongOption:
    name: str
    has_arg: bool
    key: str  # what the caller switches on (the short letter, or the long name)


class GetoptError(Exception):
    """Carries glibc's message without the ``PROG: `` prefix."""


def getopt_long(
    argv: list[str], shortopts: str, longopts: list[LongOption], *, require_order: bool = False
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Parse ``argv`` (without argv[0]).

    With ``require_order`` (glibc's leading ``+``), the first positional ends
    option parsing, so ``run ping -c1 HOST`` leaves ``-c1`` to ping.

    Returns ``(options, positionals)``: options as ``(key, value)`` pairs in
    command-line order, positionals in order.  Raises :class:`GetoptError`
    at the first bad option, like getopt_long returning '?'.
    """
    takes_arg = _short_table(shortopts)
    options: list[tuple[str, str | None]] = []
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            positionals.extend(argv[i:])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            opt = _match_long(name, word, longopts)
            if eq:
                if not opt.has_arg:
                    raise GetoptError(f"option '--{opt.name}' doesn't allow an argument")
                options.append((opt.key, value))
            elif opt.has_arg:
                if i >= len(argv):
                    raise GetoptError(f"option '--{opt.name}' requires an argument")
                options.append((opt.key, argv[i]))
                i += 1
            else:
                options.append((opt.key, None))
            continue
        if word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                letter = word[j]
                j += 1
                if letter not in takes_arg:
                    raise GetoptError(f"invalid option -- '{letter}'")
                if not takes_arg[letter]:
                    options.append((letter, None))
                    continue
                if j < len(word):
                    options.append((letter, word[j:]))
                elif i < len(argv):
                    options.append((letter, argv[i]))
                    i += 1
                else:
                    raise GetoptError(f"option requires an argument -- '{letter}'")
                break
            continue
        if require_order:
            positionals.append(word)
            positionals.extend(argv[i:])
            break
        positionals.append(word)
    return options, positionals


def _short_table(shortopts: str) -> dict[str, bool]:
    table: dict[str, bool] = {}
    k = 0
    while k < len(shortopts):
        letter = shortopts[k]
        has_arg = k + 1 < len(shortopts) and shortopts[k + 1] == ":"
        table[letter] = has_arg
        k += 2 if has_arg else 1
    return table


def _match_long(name: str, word: str, longopts: list[LongOption]) -> LongOption:
    for opt in longopts:
        if opt.name == name:
            return opt
    candidates = [opt for opt in longopts if opt.name.startswith(name)] if name else []
    if not candidates:
        raise GetoptError(f"unrecognized option '{word}'")
    if len(candidates) > 1:
        names = " ".join(f"'--{opt.name}'" for opt in candidates)
        shown = word.partition("=")[0]
        raise GetoptError(f"option '{shown}' is ambiguous; possibilities: {names}")
    return candidates[0]
