"""Who may do what (issue 15): three roles, held through Unix groups named in ``[roles]``.

The operating rules (運用要領 §2) separate the people who write alerts, the people who
approve them and the people who look after the system; maild enforces it rather than
a sudoers file. A role comes from the caller's Unix groups as the system database
(``/etc/group``, NSS) has them now, so adding or removing someone needs no reload.
"""

from __future__ import annotations

import grp
import os
import pwd

from maild.common.schema import Config

OPERATOR = "operator"
APPROVER = "approver"
ADMIN = "admin"

# For the refusal: the role a command needs, as the person refused reads it.
ROLE_NAMES = {
    OPERATOR: "発信担当者 / operator",
    APPROVER: "運用責任者 / approver",
    ADMIN: "システム管理者 / admin",
}


def groups_of(user: str) -> set[str]:
    """The names of ``user``'s groups, primary and supplementary; empty for an unknown user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return set()
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:  # a gid without a name cannot be one of the configured groups
            continue
    return names


def roles_of(config: Config, user: str) -> set[str]:
    """The roles ``user`` holds. An approver may do what an operator may (issue 15 item 1);
    the names in ``[approval] approvers`` stay approvers, so configs written before
    ``[roles]`` keep working."""
    groups = groups_of(user)
    roles = set()
    if config.roles.admins_group in groups:
        roles.add(ADMIN)
    if config.roles.approvers_group in groups or user in config.approval.approvers:
        roles |= {APPROVER, OPERATOR}
    if config.roles.operators_group in groups:
        roles.add(OPERATOR)
    return roles


def is_approver(config: Config, user: str) -> bool:
    return APPROVER in roles_of(config, user)


def refusal(user: str, needed: str) -> str:
    """The sentence a refused caller reads, naming the role the command needs."""
    name = ROLE_NAMES[needed]
    group = {
        OPERATOR: "operators_group",
        APPROVER: "approvers_group",
        ADMIN: "admins_group",
    }[needed]
    return (
        f"{user} にはこの操作の権限がありません（必要な役割: {name.split(' / ')[0]}）。"
        f" / {user} may not do this: it needs the {name.split(' / ')[1]} role"
        f" ([roles] {group})."
    )


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
