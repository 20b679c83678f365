# Shortcuts; every recipe is also a plain command in the README.

# Run the server on the embedded SQLite file.
run:
    cargo run

# The whole test suite (SQLite, and PostgreSQL from DATABASE_URL or a throwaway cluster).
test:
    cargo test --workspace

# The test suite with PostgreSQL required (as CI runs it).
test-pg:
    SOCKGATE_REQUIRE_PG=1 DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} cargo test --workspace

# The test suite on both PostgreSQL major versions and Redis, in containers built
# from Debian's packages, every server required (as CI runs it; root).
test-containers:
    bash scripts/build-test-images.sh
    env -u DATABASE_URL SOCKGATE_TEST_PG_IMAGE=sockgate-test/postgres:17 SOCKGATE_TEST_PG_SECOND_IMAGE=sockgate-test/postgres:15 SOCKGATE_TEST_REDIS_IMAGE=sockgate-test/redis:7 SOCKGATE_REQUIRE_PG=1 SOCKGATE_REQUIRE_PG_SECOND=1 SOCKGATE_REQUIRE_REDIS=1 cargo test --workspace

# Build the Docker images the testcontainers tests start (root; pass --force or --verify).
test-images *args:
    bash scripts/build-test-images.sh {{args}}

# Mint a session cookie for the development user.
mint user="1":
    cargo run -- session mint --user {{user}}

# Regenerate the npm interop vectors.
vectors:
    cd fixtures && npm ci && npm run generate

# The browser end-to-end test (system Chromium; see README).
e2e:
    npm --prefix e2e ci
    npm --prefix e2e test
