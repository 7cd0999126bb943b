"""docs/cli.md: every command and flag, read from the argparse parser of :mod:`web_node.cli`.

Subcommands added without ``help`` (the node's internal ``group``) are left
out, as ``web-node --help`` leaves them out. Commands that take the same
arguments (``web``, the roles, the members) share one table.
"""

from __future__ import annotations

import argparse
from typing import Any

from web_node.cli import EXIT_CONFIG, EXIT_FAILED, build_parser
from web_node.members import Registry
from web_node.reference._markdown import code, header, table


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _commands(prefix: str, parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(command words, help, parser) of every command that runs something, subcommands of subcommands included
    (``debug stacks``); commands without help are internal and left out."""
    sub = _subparsers(parser)
    if sub is None:
        return []
    out = []
    for action in sub._choices_actions:
        words = f"{prefix} {action.dest}".strip()
        child = sub.choices[action.dest]
        help_text = (child.description or action.help or "").replace("%%", "%")
        out.append((words, help_text, child))
        out += _commands(words, child)
    return out


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as ``--help`` prints it: ``%(default)s`` and friends expanded, ``%%`` as ``%``."""
    text = action.help or ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return text % params


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar if isinstance(action.metavar, str) else (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper())
    return ", ".join(f"{o} {metavar}" for o in action.option_strings)


def _default(action: argparse.Action, help_text: str) -> str:
    """The default, unless the help already says it (then it may depend on the host: the host name)."""
    if action.required:
        return "required"
    value = action.default
    if value in (None, False, [], argparse.SUPPRESS) or action.nargs == 0 or "default" in help_text.lower():
        return ""
    return code(str(value))


def _rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        text = _help(action, parser.prog)
        notes = []
        if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
            notes.append("repeatable")
        rows.append([code(_flag(action)), _default(action, text), "; ".join([text, *notes]) if text else "; ".join(notes)])
    return rows


def render(registry: Registry) -> str:
    parser = build_parser(registry)
    top = _subparsers(parser)
    assert top is not None, "web-node's parser has no subcommands"
    shown = {a.dest: (a.help or "").replace("%%", "%") for a in top._choices_actions}
    out = [header("Command line", "the argparse parser of web_node/cli.py (commands generated from the member "
                                  "registry, plus those of quickstart and worker)")]
    out.append(f"`{parser.prog} COMMAND [flags]`: {parser.description}\n\n")
    out.append(table(["command", "does"], [[code(f"web-node {name}"), text] for name, text in shown.items()]))
    out.append(f"\nExit status: 0 done, {EXIT_FAILED} failed (the message says why), {EXIT_CONFIG} bad configuration; "
               "bad flags exit 2 (argparse).\n")
    # Commands with identical arguments share one section, in parser order.
    groups: list[tuple[list[tuple[str, str]], list[list[str]], bool]] = []
    for words, help_text, p in _commands("", parser):
        rows = _rows(p)
        has_subcommands = _subparsers(p) is not None
        if groups and groups[-1][1] == rows and " " not in words and not has_subcommands:
            groups[-1][0].append((words, help_text))
        else:
            groups.append(([(words, help_text)], rows, has_subcommands))
    for commands, rows, has_subcommands in groups:
        if len(commands) > 1:
            out.append(f"\n## web-node {', '.join(words for words, _ in commands)}\n\n")
            out.append("Each runs the members its line in the table above names; they take the same flags.\n")
        else:
            words, help_text = commands[0]
            out.append(f"\n## web-node {words}\n\n{help_text}\n")
        if rows:
            out.append("\n" + table(["flag", "default", "meaning"], rows))
        else:
            out.append("\nIts subcommands follow.\n" if has_subcommands else "\nNo flags.\n")
    return "".join(out)
