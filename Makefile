# The two set-up commands of the README. Both are idempotent and install everything
# they need into .venv (Python packages) and .gnnrec/ (Neo4j jars, data, logs).
# Prerequisites on the machine: Python >= 3.11, Java 17 (or 21) and Maven.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gnnrec-installed
GNNREC := $(BIN)/gnnrec
DEMO_RUN := runs/demo-lightgcn
DEMO_GRAPH := .gnnrec/lastfm.pt
# LightGCN's defaults (README, "Defaults"): about 40 epochs on LastFM before early stopping.
DEMO_TRAIN_ARGS ?= --no-progress
# setuptools prints an informational "Editable installation" notice for every editable
# install of a mapped package layout (pyproject's package-dir); nothing to fix, so off.
EDITABLE_NOTICE_OFF := PYTHONWARNINGS="ignore:Editable installation:UserWarning"

.PHONY: install demo demo-serve test lint lock

# Python packages come from requirements.lock (exact versions, sha256 hashes; refresh it
# with `make lock`), then gnnrec itself as an editable install. The second pip call finds
# every locked requirement satisfied; it only adds a dependency that pyproject.toml gained
# after the lock was made (tests/test_lock.py fails until the lock is refreshed).
$(STAMP): pyproject.toml requirements.lock graph/neo4j_server/pom.xml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(EDITABLE_NOTICE_OFF) $(BIN)/python -m pip install --quiet -e '.[dev]'
	$(GNNREC) neo4j install
	touch $(STAMP)

# Re-resolve requirements.lock to the newest versions pyproject.toml allows (all
# platforms, Python >= 3.11), with hashes; then run make test and commit the lock.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	head -3 requirements.lock > requirements.lock.new
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	    --generate-hashes --no-annotate --no-header -q -o requirements.lock.body
	cat requirements.lock.body >> requirements.lock.new && rm requirements.lock.body
	mv requirements.lock.new requirements.lock

install: $(STAMP)

demo: install
	$(GNNREC) neo4j start
	$(GNNREC) ingest --dataset lastfm
	$(GNNREC) stats
	@echo "--- top artists by listeners"
	$(GNNREC) cypher "MATCH (u:User)-[r:INTERACTED]->(i:Item) RETURN i.id AS artist, count(u) AS listeners, sum(r.weight) AS plays ORDER BY listeners DESC LIMIT 5"
	@echo "--- user 2's friends and what they listen to most"
	$(GNNREC) cypher "MATCH (u:User {id: \$$user})-[:FRIEND]-(f:User)-[r:INTERACTED]->(i:Item) WITH f, i, r ORDER BY r.weight DESC WITH f, collect(i.id)[..3] AS top RETURN f.id AS friend, top AS favourite_artists ORDER BY friend LIMIT 5" --param user=2
	@echo "--- artists user 2's friends play that user 2 has never played"
	$(GNNREC) cypher "MATCH (u:User {id: \$$user})-[:FRIEND]-(:User)-[r:INTERACTED]->(i:Item) WHERE NOT (u)-[:INTERACTED]->(i) RETURN i.id AS artist, count(*) AS friends, sum(r.weight) AS plays ORDER BY friends DESC, plays DESC LIMIT 5" --param user=2
	$(GNNREC) export --out $(DEMO_GRAPH)
	$(GNNREC) train --model lightgcn --graph $(DEMO_GRAPH) --out $(DEMO_RUN) --overwrite $(DEMO_TRAIN_ARGS)
	$(GNNREC) evaluate $(DEMO_RUN) --split test
	@echo "--- LightGCN's top 5 for user 2"
	$(GNNREC) recommend 2 -k 5 --run $(DEMO_RUN)
	$(GNNREC) writeback --run $(DEMO_RUN) --k 20
	@echo "--- user 2's recommendations, with how many friends and co-listeners play each"
	$(GNNREC) cypher "MATCH (u:User {id: \$$user})-[r:RECOMMENDED {run: \$$run}]->(i:Item) OPTIONAL MATCH (u)-[:FRIEND]-(f:User)-[:INTERACTED]->(i) WITH u, r, i, count(DISTINCT f) AS friends OPTIONAL MATCH (u)-[:INTERACTED]->(:Item)<-[:INTERACTED]-(c:User)-[:INTERACTED]->(i) RETURN r.rank AS rank, i.id AS artist, round(r.score, 2) AS score, friends, count(DISTINCT c) AS co_listeners ORDER BY rank LIMIT 5" --param user=2 --param run=$(notdir $(DEMO_RUN))
	@$(MAKE) --no-print-directory demo-serve

# Serve the demo run with Ray Serve, post feedback for user 2 and show what changes.
DEMO_PORT ?= 8000
DEMO_TOKEN ?= demo-token
DEMO_URL := http://127.0.0.1:$(DEMO_PORT)
demo-serve: install
	@set -e; $(GNNREC) forget demo-newcomer > /dev/null 2>&1 || true; \
	$(GNNREC) serve --run $(DEMO_RUN) --port $(DEMO_PORT) --token $(DEMO_TOKEN) > .gnnrec/serve.log 2>&1 & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	for i in $$(seq 1 120); do curl -sf $(DEMO_URL)/health > /dev/null && break; \
	  kill -0 $$pid 2>/dev/null || { cat .gnnrec/serve.log; exit 1; }; sleep 1; done; \
	echo "--- serving on $(DEMO_URL) (OpenAPI: $(DEMO_URL)/docs)"; curl -s $(DEMO_URL)/health; echo; \
	echo "--- user 2 before feedback"; $(GNNREC) recommend 2 -k 5 --server $(DEMO_URL); \
	echo "--- POST /interactions: user 2 plays three artists from a neighbourhood of new taste"; \
	curl -sf -X POST $(DEMO_URL)/interactions -H "Authorization: Bearer $(DEMO_TOKEN)" \
	  -H 'Content-Type: application/json' \
	  -d '[{"user": "2", "item": "289", "weight": 500}, {"user": "2", "item": "292", "weight": 400}, {"user": "2", "item": "300", "weight": 300}]'; echo; \
	echo "--- user 2 after feedback (no retraining)"; $(GNNREC) recommend 2 -k 5 --server $(DEMO_URL); \
	item=$$($(GNNREC) recommend 2 -k 1 --server $(DEMO_URL) --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["item"])'); \
	echo "--- why artist $$item for user 2"; $(GNNREC) explain 2 $$item --server $(DEMO_URL); \
	echo "--- a new user who brings two artists (cold start)"; \
	curl -sf -X POST $(DEMO_URL)/users -H "Authorization: Bearer $(DEMO_TOKEN)" \
	  -H 'Content-Type: application/json' -d '{"user": "demo-newcomer", "items": ["289", "292"]}'; echo; \
	echo "--- DELETE /users/demo-newcomer (forgotten in Neo4j and in the serving state)"; \
	curl -sf -X DELETE $(DEMO_URL)/users/demo-newcomer -H "Authorization: Bearer $(DEMO_TOKEN)"; echo

test: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check gnnrec graph gnn ingest serve experiments tests
