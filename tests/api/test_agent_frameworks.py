"""What agent frameworks call, against a real hearth serve: LangChain's ChatOpenAI
(`with_structured_output` of a Pydantic model, `bind_tools`), and the OpenAI Agents SDK running a
tool-using agent over the Responses API (its default), plain and streamed."""
import asyncio

import pytest
from pydantic import BaseModel, Field

langchain_openai = pytest.importorskip("langchain_openai")
agents = pytest.importorskip("agents")


class Person(BaseModel):
    name: str = Field(max_length=20, description="The person's first name")
    age: int = Field(description="Age in years")
    city: str = Field(max_length=20)


@pytest.fixture(scope="module")
def chat_model(server):
    return langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key=server.api_key, model="smollm2",
                                       temperature=0, max_tokens=80, max_retries=0, timeout=300)


def test_langchain_structured_output(chat_model):
    structured = chat_model.with_structured_output(Person)  # json_schema response_format, strict
    person = structured.invoke("Invent a person who lives in Lyon.")
    assert isinstance(person, Person)
    assert person.name and person.city and isinstance(person.age, int)


def test_langchain_structured_output_json_mode(chat_model):
    structured = chat_model.with_structured_output(Person, method="function_calling")  # a forced tool call
    person = structured.invoke("Invent a person who lives in Lyon.")
    assert isinstance(person, Person)


def test_langchain_bind_tools(chat_model):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    bound = chat_model.bind_tools([get_weather], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Oslo?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"].startswith("call_")
    # Streamed, the tool call chunks add up to the same call.
    chunks = list(bound.stream("What is the weather in Oslo?"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"
    assert merged.tool_calls[0]["args"] == call["args"]


@pytest.fixture
def agent_client(server):  # per test: an async client belongs to one event loop
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    return AsyncOpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


def weather_agent(agent_client):
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"It is 21 C and clear in {city}."

    model = agents.OpenAIResponsesModel(model="smollm2", openai_client=agent_client)
    agent = agents.Agent(name="weather", instructions="You answer questions about the weather.", model=model,
                         tools=[get_weather],
                         model_settings=agents.ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0,
                                                             max_tokens=80),
                         tool_use_behavior="stop_on_first_tool")
    return agent, calls


def test_agents_sdk_runs_a_tool(agent_client):
    agent, calls = weather_agent(agent_client)
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3))
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert result.final_output == f"It is 21 C and clear in {calls[0]}."


def test_agents_sdk_streamed(agent_client):
    agent, calls = weather_agent(agent_client)

    async def run():
        result = agents.Runner.run_streamed(agent, "What is the weather in Rome?", max_turns=3)
        kinds = [event.type async for event in result.stream_events()]
        return result, kinds

    result, kinds = asyncio.run(run())
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert len(calls) == 1
    assert result.final_output == f"It is 21 C and clear in {calls[0]}."


def test_agents_sdk_second_turn_sends_the_tool_output(agent_client):
    # After the tool runs, the model is called again with the call and its output as input items
    # (function_call + function_call_output), tool_choice reset to auto. Whatever the small model
    # does then (answer, or call again), the run ends at the second model response.
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return "21 C and clear"

    def finish_on_second_call(context, results):
        done = len(calls) > 1
        return agents.ToolsToFinalOutputResult(is_final_output=done, final_output=results[-1].output if done else None)

    model = agents.OpenAIResponsesModel(model="smollm2", openai_client=agent_client)
    agent = agents.Agent(name="weather", instructions="Answer in one sentence.", model=model, tools=[get_weather],
                         model_settings=agents.ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                                             temperature=0, max_tokens=60),
                         tool_use_behavior=finish_on_second_call, reset_tool_choice=True)
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(result.raw_responses) == 2, result.raw_responses
    assert calls and isinstance(result.final_output, str) and result.final_output
