// What a permission level allows, as cairn server --auth decides it (MLflow's levels): READ reads,
// EDIT also writes (log, tag), MANAGE also deletes and restores. Without --auth the API says MANAGE.

const LEVELS = { NONE: 0, READ: 1, EDIT: 2, MANAGE: 3 };

function atLeast(permission, needed) {
  return (LEVELS[permission] ?? 0) >= LEVELS[needed];
}

export function mayDelete(permission) {
  return atLeast(permission, 'MANAGE');
}
