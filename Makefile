# make demo: set everything up, run chloed and the echo app (open http://localhost:4567)
# make chat: the same, with the chat demo app instead (open http://localhost:4567 in two browsers)
# make pusher-demo: the same, with a chat on pusher-js and the pusher library (open http://localhost:4567 in two browsers)
# make test: set everything up, type-check (mypy, configured in setup.cfg), run every test (what CI runs, through .ci/run),
#   the Node tests, tsc and npm pack of clients/js among them (tests/test_js_package.py)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_SECRET ?= demo-secret
CHAT_SECRET ?= chat-demo-secret-change-me-0123456789
CHAT_STAFF ?= alice

.PHONY: setup system-deps test demo chat pusher-demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The test-only JS libraries (pusher-js, Laravel Echo) the browser tests load,
# as tests/js/package-lock.json pins them; again only when the lock changes.
# Neither needs an install script, so none runs.
JS = tests/js
$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --ignore-scripts --no-audit --no-fund --no-update-notifier
	touch $@

# The npm package of chloe.js (clients/js): esbuild, TypeScript, React and
# its test renderer as its package-lock.json pins them, for its build and its
# tests (tests/test_js_package.py, which `make test` runs). This npm ci also
# fills npm's cache, from which that test installs the packed tarball into a
# fresh app offline. No install script runs (esbuild and tsc find their
# binaries without one).
CLIENT_JS = clients/js
$(CLIENT_JS)/node_modules/.installed: $(CLIENT_JS)/package.json $(CLIENT_JS)/package-lock.json
	cd $(CLIENT_JS) && npm ci --ignore-scripts --no-audit --no-fund --no-update-notifier
	touch $@

system-deps:
	./scripts/install-system-deps

setup: system-deps $(VENV)/.installed $(JS)/node_modules/.installed $(CLIENT_JS)/node_modules/.installed

test: setup
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: setup
	@echo "chloed on http://localhost:8901, the echo app on http://localhost:4567 -- open http://localhost:4567/"
	@CHLOE_SECRET=$(DEMO_SECRET) $(BIN)/python examples/echo_app.py --port 4567 --chloe http://localhost:8901 & \
	  app=$$!; trap "kill $$app 2>/dev/null" EXIT INT TERM; \
	  CHLOE_SECRET=$(DEMO_SECRET) $(BIN)/twistd -n --pidfile= chloe --listen tcp:8901:interface=127.0.0.1 --app-url http://127.0.0.1:4567/updates

chat: setup
	@echo "chloed on http://localhost:8901, the chat app on http://localhost:4567 -- open http://localhost:4567/ (staff: $(CHAT_STAFF))"
	@CHLOE_SECRET=$(CHAT_SECRET) $(BIN)/python examples/chat_app.py --port 4567 --chloe http://localhost:8901 --staff '$(CHAT_STAFF)' & \
	  app=$$!; trap "kill $$app 2>/dev/null" EXIT INT TERM; \
	  CHLOE_SECRET=$(CHAT_SECRET) $(BIN)/twistd -n --pidfile= chloe --listen tcp:8901:interface=127.0.0.1 --app-url http://127.0.0.1:4567/updates

pusher-demo: setup
	@echo "chloed on http://localhost:8901 (Pusher app of examples/pusher_chat.toml), the chat on http://localhost:4567 -- open http://localhost:4567/ in two browsers"
	@$(BIN)/python examples/pusher_chat.py --port 4567 --chloe http://127.0.0.1:8901 --config examples/pusher_chat.toml & \
	  app=$$!; trap "kill $$app 2>/dev/null" EXIT INT TERM; \
	  $(BIN)/twistd -n --pidfile= chloe --listen tcp:8901:interface=127.0.0.1 --config examples/pusher_chat.toml

clean:
	rm -rf $(VENV) build *.egg-info $(JS)/node_modules $(CLIENT_JS)/node_modules $(CLIENT_JS)/dist
