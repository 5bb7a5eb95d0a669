//! Deleting a user, and with them what they own (VMs, volumes, backups, cloud-init seeds) or
//! handing it to the admin who deletes them.

use crate::auth::owned::{self, Owned};
use crate::auth::users::{self, SessionUser};
use crate::backups;
use crate::config::Settings;
use crate::error::{ApiError, ApiResult};

/// `admin` deletes `username`; `how` says what becomes of what they own (refused while they own
/// anything, unless told to delete it or hand it over).
pub async fn delete_user(
    ctx: &backups::Ctx,
    settings: &Settings,
    admin: &SessionUser,
    username: &str,
    how: Owned,
) -> ApiResult<()> {
    if username == admin.username {
        return Err(ApiError::BadRequest("You cannot delete your own account".into()));
    }
    let check = |c: &rusqlite::Connection, target: &str| -> anyhow::Result<Result<(), ApiError>> {
        let Some(user) = users::get(c, target)? else {
            return Ok(Err(ApiError::NotFound(format!("User {target} not found"))));
        };
        if user.is_admin && users::count_admins(c)? <= 1 {
            return Ok(Err(ApiError::BadRequest("You cannot delete the last admin".into())));
        }
        Ok(Ok(()))
    };
    let store = &ctx.vms.store;
    let target = username.to_string();
    store.call(move |c| check(c, &target)).await??;
    if how == Owned::Delete {
        delete_all(ctx, settings, username).await?;
    }
    let (target, to) = (username.to_string(), admin.username.clone());
    store
        .call(move |c| {
            let tx = c.transaction()?;
            if let Err(e) = check(&tx, &target)? {
                return Ok(Err(e));
            }
            if how == Owned::HandOver {
                owned::hand_over(&tx, &target, &to)?;
            } else if let Some(refused) = owned::refusal(&target, owned::counts(&tx, &target)?) {
                return Ok(Err(refused));
            }
            users::delete(&tx, &target)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await??;
    ctx.jobs.forget_owner(username);
    Ok(())
}

/// Deletes everything `user` owns. Each object goes on its own; the user is deleted after this
/// succeeds, so a failure (a volume attached to another user's VM, say) can be fixed and retried.
async fn delete_all(ctx: &backups::Ctx, settings: &Settings, user: &str) -> ApiResult<()> {
    let u = user.to_string();
    let vms: Vec<String> = ctx
        .vms
        .store
        .call(move |c| {
            let mut stmt = c.prepare("SELECT id FROM vms WHERE owner = ?1")?;
            let rows = stmt.query_map([u], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for id in vms {
        match ctx.vms.delete(&id, true).await {
            Ok(()) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let u = user.to_string();
    let volumes = ctx
        .vms
        .store
        .call(move |c| {
            let all = crate::store::volumes::list(c)?;
            Ok(all.into_iter().filter(|v| v.owner == u).collect::<Vec<_>>())
        })
        .await?;
    for v in volumes {
        let id = v.id.clone();
        if !ctx.vms.store.call(move |c| Ok(crate::store::volumes::delete_unattached(c, &id)?)).await? {
            return Err(ApiError::Conflict(format!(
                "Volume {} is attached to VM {}: detach it first",
                v.name,
                v.attached_to.unwrap_or_default()
            )));
        }
        let _ = std::fs::remove_file(&v.path);
    }
    backups::remove_all_of(ctx, user).await?;
    let u = user.to_string();
    let seeds = ctx.vms.store.call(move |c| Ok(crate::store::seeds::owned_by(c, &u)?)).await?;
    let dir = crate::isos::seeds_dir(settings);
    for name in seeds {
        let _ = std::fs::remove_file(dir.join(&name));
        ctx.vms.store.call(move |c| Ok(crate::store::seeds::delete(c, &name)?)).await?;
    }
    ctx.jobs.forget_owner(user);
    Ok(())
}
