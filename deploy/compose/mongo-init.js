// Run by docker-compose.yml's one-shot `mongo-init` container (mongosh, connected to the replica
// set rs0 once it has a primary): makes the services' MongoDB user, idempotently.
//
// The user lives in the admin database (authSource=admin in PHARMACY_MONGO_URL) with one role:
// readWrite on the services' database (PHARMACY_MONGO_DATABASE), enough to read, write and create
// indexes there and nothing anywhere else. If the user exists already, its password and roles are
// set again, so a new MONGO_APP_PASSWORD in .env (or another database) takes effect at the next
// `docker compose up`. Root logs in for this from the environment; no secret is in this file.

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

try {
  const admin = db.getSiblingDB("admin");
  admin.auth(required("MONGO_INITDB_ROOT_USERNAME"), required("MONGO_INITDB_ROOT_PASSWORD"));

  const user = required("MONGO_APP_USERNAME");
  const database = required("MONGO_APP_DATABASE");
  if (user === process.env.MONGO_INITDB_ROOT_USERNAME) {
    throw new Error("MONGO_APP_USERNAME must differ from MONGO_INITDB_ROOT_USERNAME: the services never connect as root");
  }
  const settings = { pwd: required("MONGO_APP_PASSWORD"), roles: [{ role: "readWrite", db: database }] };

  if (admin.getUser(user) === null) {
    admin.createUser({ user: user, ...settings });
    print(`mongo-init: created user ${user} (readWrite on ${database})`);
  } else {
    admin.updateUser(user, settings);
    print(`mongo-init: updated user ${user} (readWrite on ${database} only, password from the environment)`);
  }
} catch (error) {
  print(`mongo-init: ${error.message}`);
  quit(1);
}
