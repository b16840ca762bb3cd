//! `tallyhouse user …` and `tallyhouse lockout …`: back-office users and
//! login throttling, over RPC to the auth service (as the operator: the
//! audit trail records these calls with no actor). A password is never an
//! argument: it comes from standard input (`--password-stdin`, first line)
//! or from a prompt that does not echo.

use crate::commands::{Context, input_error};
use crate::error::CliError;
use crate::output::{record, table, time, time_or_dash};
use rpc_contracts::auth::{
    self, AddUserRequest, ClearThrottleRequest, ListThrottlesRequest, ListUsersRequest, Password,
    Role, SetPasswordRequest, ThrottleScope, UpdateUserRequest, User,
};
use std::io::{BufRead as _, IsTerminal as _};

/// User commands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a back-office user. The password (at least 12 characters) is
    /// asked for without echo, or read from stdin with --password-stdin.
    Add {
        /// 1 to 64 of lowercase letters, digits, '.', '_', '-', '@'.
        username: String,
        /// A role (admin, analyst, auditor); repeat for several.
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<Role>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List every user.
    List,
    /// Disable a user: logins fail and every token it holds stops working.
    Disable {
        /// Whom.
        username: String,
    },
    /// Enable a disabled user (its old tokens stay retired).
    Enable {
        /// Whom.
        username: String,
    },
    /// Replace a user's roles (tokens already issued get the new roles).
    SetRoles {
        /// Whom.
        username: String,
        /// A role (admin, analyst, auditor); repeat for several.
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<Role>,
    },
    /// Reset a user's password; every token it holds stops working.
    SetPassword {
        /// Whom.
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// What a lockout entry is keyed by, on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScopeArg {
    /// A username (known or not).
    Account,
    /// A client address (an IPv6 address stands for its /64).
    Address,
}

/// Login throttling commands.
#[derive(Debug, clap::Subcommand)]
pub enum LockoutCommand {
    /// List accounts and client addresses with recent failed logins.
    List,
    /// Forget the failed logins of an account or a client address, lifting
    /// its delay or lockout.
    Clear {
        /// `account` or `address`.
        #[arg(value_enum)]
        scope: ScopeArg,
        /// The username or the address.
        key: String,
    },
}

/// Runs a user command.
pub async fn run(cmd: UserCommand, ctx: &Context) -> Result<(), CliError> {
    let user = match cmd {
        UserCommand::Add {
            username,
            roles,
            password_stdin,
        } => {
            let password = read_new_password(password_stdin)?;
            ctx.rpc
                .call::<auth::AddUser>(&AddUserRequest {
                    username,
                    roles,
                    password,
                    actor: None,
                })
                .await?
        }
        UserCommand::List => {
            let list = ctx
                .rpc
                .call::<auth::ListUsers>(&ListUsersRequest {})
                .await?;
            ctx.output.print(&list, || {
                let rows: Vec<Vec<String>> = list
                    .users
                    .iter()
                    .map(|u| {
                        vec![
                            u.username.clone(),
                            roles(&u.roles),
                            status(u).to_owned(),
                            time(u.created_at),
                            time(u.password_changed_at),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "USERNAME",
                        "ROLES",
                        "STATUS",
                        "CREATED_AT",
                        "PASSWORD_CHANGED_AT",
                    ],
                    &rows,
                )
            });
            return Ok(());
        }
        UserCommand::Disable { username } => update(ctx, username, None, Some(true)).await?,
        UserCommand::Enable { username } => update(ctx, username, None, Some(false)).await?,
        UserCommand::SetRoles { username, roles } => {
            update(ctx, username, Some(roles), None).await?
        }
        UserCommand::SetPassword {
            username,
            password_stdin,
        } => {
            let password = read_new_password(password_stdin)?;
            ctx.rpc
                .call::<auth::SetPassword>(&SetPasswordRequest {
                    username,
                    password,
                    current_password: None,
                    actor: None,
                })
                .await?
        }
    };
    ctx.output.print(&user, || show(&user));
    Ok(())
}

/// Runs a lockout command.
pub async fn run_lockout(cmd: LockoutCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        LockoutCommand::List => {
            let list = ctx
                .rpc
                .call::<auth::ListThrottles>(&ListThrottlesRequest {})
                .await?;
            ctx.output.print(&list, || {
                let rows: Vec<Vec<String>> = list
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            scope_name(e.scope).to_owned(),
                            e.key.clone(),
                            e.failures.to_string(),
                            match (e.blocked_until, e.locked) {
                                (Some(_), true) => "locked",
                                (Some(_), false) => "delayed",
                                (None, _) => "-",
                            }
                            .to_owned(),
                            time_or_dash(e.blocked_until),
                            time(e.last_failure_at),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SCOPE",
                        "KEY",
                        "FAILURES",
                        "BLOCK",
                        "BLOCKED_UNTIL",
                        "LAST_FAILURE_AT",
                    ],
                    &rows,
                )
            });
        }
        LockoutCommand::Clear { scope, key } => {
            let scope = match scope {
                ScopeArg::Account => ThrottleScope::Account,
                ScopeArg::Address => ThrottleScope::Address,
            };
            let cleared = ctx
                .rpc
                .call::<auth::ClearThrottle>(&ClearThrottleRequest {
                    scope,
                    key: key.clone(),
                    actor: None,
                })
                .await?;
            ctx.output.print(&cleared, || {
                if cleared.cleared {
                    format!("cleared the failed logins of {} {key}", scope_name(scope))
                } else {
                    format!("{} {key} had no failed logins", scope_name(scope))
                }
            });
        }
    }
    Ok(())
}

async fn update(
    ctx: &Context,
    username: String,
    roles: Option<Vec<Role>>,
    disabled: Option<bool>,
) -> Result<User, CliError> {
    ctx.rpc
        .call::<auth::UpdateUser>(&UpdateUserRequest {
            username,
            roles,
            disabled,
            actor: None,
        })
        .await
}

/// The new password: the first line of stdin with `--password-stdin`, else
/// typed twice at a prompt without echo (stdin must be a terminal).
fn read_new_password(from_stdin: bool) -> Result<Password, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| input_error(format!("cannot read the password from stdin: {e}")))?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err(input_error(
                "no password on stdin (the first line is empty)",
            ));
        }
        return Ok(Password(password.to_owned()));
    }
    if !std::io::stdin().is_terminal() {
        return Err(input_error(
            "stdin is not a terminal: pass the password on stdin with --password-stdin",
        ));
    }
    let first = rpassword::prompt_password("Password (at least 12 characters): ")
        .map_err(|e| input_error(format!("cannot read the password: {e}")))?;
    let again = rpassword::prompt_password("The same password again: ")
        .map_err(|e| input_error(format!("cannot read the password: {e}")))?;
    if first != again {
        return Err(input_error("the two passwords differ"));
    }
    Ok(Password(first))
}

fn roles(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn status(user: &User) -> &'static str {
    if user.disabled { "disabled" } else { "active" }
}

fn scope_name(scope: ThrottleScope) -> &'static str {
    match scope {
        ThrottleScope::Account => "account",
        ThrottleScope::Address => "address",
    }
}

fn show(u: &User) -> String {
    record(&[
        ("username", u.username.clone()),
        ("roles", roles(&u.roles)),
        ("status", status(u).to_owned()),
        ("created_at", time(u.created_at)),
        ("password_changed_at", time(u.password_changed_at)),
    ])
}

#[cfg(test)]
mod tests {
    use crate::commands::{Cli, Command};
    use clap::Parser as _;

    #[test]
    fn roles_repeat_and_passwords_are_never_arguments() {
        let cli = Cli::try_parse_from([
            "tallyhouse",
            "user",
            "add",
            "alice",
            "--role",
            "analyst",
            "--role",
            "auditor",
            "--password-stdin",
        ])
        .unwrap();
        let Command::User(super::UserCommand::Add {
            roles,
            password_stdin,
            ..
        }) = cli.command
        else {
            panic!("user add");
        };
        assert_eq!(
            roles,
            [
                rpc_contracts::auth::Role::Analyst,
                rpc_contracts::auth::Role::Auditor
            ]
        );
        assert!(password_stdin);
        for bad in [
            vec!["tallyhouse", "user", "add", "alice"],
            vec!["tallyhouse", "user", "add", "alice", "--role", "root"],
            vec![
                "tallyhouse",
                "user",
                "add",
                "alice",
                "--role",
                "admin",
                "--password",
                "x",
            ],
            vec!["tallyhouse", "lockout", "clear", "user", "alice"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["tallyhouse", "lockout", "clear", "address", "::1"]).is_ok());
    }
}
