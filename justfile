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
