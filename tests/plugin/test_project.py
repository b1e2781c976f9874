from types import SimpleNamespace

import pytest

from plugin.errors import PluginError
from plugin.project import (
    BackendSettings,
    config_differs,
    connect_backend,
    find_or_create_project,
    predicted_region_counts,
    request_predictions,
)
from tests.plugin.conftest import FakeConnection


def projects_client(existing):
    created = []

    def create(**kwargs):
        created.append(kwargs)
        return SimpleNamespace(id=50, label_config=kwargs["label_config"])

    client = SimpleNamespace(
        projects=SimpleNamespace(
            list=lambda title: iter([p for p in existing if title.lower() in p.title.lower()]),  # like LS: icontains
            get=lambda project_id: next(p for p in existing if p.id == project_id),
            create=create,
        )
    )
    return client, created


def test_an_exact_title_is_reused_and_a_similar_one_is_not():
    existing = [
        SimpleNamespace(id=3, title="Demo project", label_config="<View/>"),
        SimpleNamespace(id=2, title="Demo", label_config="<View>  </View>"),
    ]
    client, created = projects_client(existing)
    handle = find_or_create_project(FakeConnection(client), "Demo", "<View></View>")
    assert (handle.id, handle.created) == (2, False)
    assert not config_differs(handle, "<View>\n</View>")
    assert config_differs(handle, "<View><Image/></View>")
    assert created == []

    handle = find_or_create_project(FakeConnection(client), "New one", "<View/>")
    assert (handle.id, handle.created) == (50, True)
    assert created == [{"title": "New one", "label_config": "<View/>", "description": ""}]


def test_short_titles_are_refused_before_asking_label_studio():
    client, created = projects_client([])
    with pytest.raises(PluginError, match="at least 3 characters"):
        find_or_create_project(FakeConnection(client), "ab", "<View/>")


def test_connect_backend_reuses_the_same_url():
    created = []
    backends = [SimpleNamespace(id=4, url="http://backend:9090/")]
    updated = []
    webhooks = [SimpleNamespace(id=9, url="http://other:9090/webhook", headers=None)]
    client = SimpleNamespace(
        ml=SimpleNamespace(
            list=lambda project: backends,
            create=lambda **kwargs: created.append(kwargs) or SimpleNamespace(id=5, **kwargs),
        ),
        webhooks=SimpleNamespace(
            list=lambda project: webhooks, update=lambda id, headers: updated.append((id, headers))
        ),
    )
    backend, new = connect_backend(FakeConnection(client), 1, BackendSettings(url="http://backend:9090"))
    assert (backend.id, new, created) == (4, False, [])

    settings = BackendSettings(
        url="http://other:9090", basic_auth_user="u", basic_auth_password="p", is_interactive=True
    )
    backend, new = connect_backend(FakeConnection(client), 1, settings)
    assert (backend.id, new) == (5, True)
    assert created == [
        {
            "url": "http://other:9090",
            "project": 1,
            "title": settings.title,
            "is_interactive": True,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "u",
            "basic_auth_pass": "p",
        }
    ]
    # Label Studio's webhook for the backend carries no basic auth of its own: the header is added
    assert updated == [(9, {"Authorization": "Basic dTpw"})]  # base64("u:p")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"url": "backend:9090"}, "not an http"),
        ({"url": "http://b", "basic_auth_user": "u"}, "both a user and a password"),
    ],
)
def test_backend_settings_validation(kwargs, message):
    with pytest.raises(PluginError, match=message):
        BackendSettings(**kwargs)


def test_predictions_are_requested_in_batches():
    actions = []
    client = SimpleNamespace(actions=SimpleNamespace(create=lambda **kwargs: actions.append(kwargs)))
    request_predictions(FakeConnection(client), 7, [1, 2, 3, 4, 5], batch_size=2)
    assert [action["selected_items"]["included"] for action in actions] == [[1, 2], [3, 4], [5]]
    assert {action["id"] for action in actions} == {"retrieve_tasks_predictions"}
    assert all(action["selected_items"]["all"] is False and action["project"] == 7 for action in actions)
    with pytest.raises(PluginError, match="at least 1"):
        request_predictions(FakeConnection(client), 7, [1], batch_size=0)


def test_predicted_region_counts_use_the_newest_prediction():
    predictions = [
        SimpleNamespace(id=1, task=10, result=[{"id": "a"}, {"id": "a"}]),
        SimpleNamespace(id=3, task=10, result=[]),
        SimpleNamespace(id=2, task=11, result=[{"id": "b"}]),
    ]
    client = SimpleNamespace(predictions=SimpleNamespace(list=lambda project: predictions))
    assert predicted_region_counts(FakeConnection(client), 1) == {10: 0, 11: 1}
