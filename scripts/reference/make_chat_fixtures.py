#!/usr/bin/env python3
"""Write tests/fixtures/chat/<family>.json: what each chat-template family's real Jinja template
renders for a set of conversations, for the test that compares hearth's chat templates with it
(tests/engine/test_chat_template.cpp).

The templates are rendered with `jinja2` the way Hugging Face transformers renders
`tokenizer.apply_chat_template` (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
`raise_exception`, `bos_token`, `eos_token`, `messages`, `add_generation_prompt`). A conversation
the template refuses (raise_exception) is written with "error" instead of "expected".

Each family file holds the conversations (name, messages, add_generation_prompt) and templates:
  - "render": true  -> the family's reference template; hearth must reproduce every case byte for
                       byte (and refuse the cases the template refuses);
  - "render": false -> another real template of the family that hearth must recognize, but whose
                       output differs in ways the family cannot express ("note" says how).
unknown.json lists real templates of other families that must not be recognized.

Usage:  python3 scripts/reference/make_chat_fixtures.py [MODELS_DIR]
Needs:  pip install -r scripts/reference/requirements.txt jinja2, and SmolLM2 fetched with
        scripts/get-model.sh smollm2 (its template is read from the GGUF itself)
"""
import json
import sys
from pathlib import Path

import gguf
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models"
OUT = ROOT / "tests/fixtures/chat"

# Templates as they read after JSON-decoding the model's tokenizer_config.json (so a Jinja string
# literal holds the two characters backslash-n where the template means a newline).

QWEN2_5_INSTRUCT = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN2_INSTRUCT = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    r"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

OPENHERMES_2_5 = (
    r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    r"+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|im_start|>assistant\n' }}{% endif %}")

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3_INSTRUCT = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}"
    r"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    r"+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    r"{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    r"{% endif %}")

LLAMA3_2_INSTRUCT = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

LLAMA2_CHAT = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    r"{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    r"{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    r"{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    r"{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    r"{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    r"{% endif %}{% endfor %}")

MISTRAL_V1 = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_INSTRUCT_OLD = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    r"(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    r"user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    r"{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    r"{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    r"roles are supported!') }}{% endif %}{% endfor %}")

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    r"{{ '<|user|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'system' %}\n"
    r"{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n"
    r"{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
    "\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

GEMMA2 = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    r"supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    r"(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    r"user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    r"{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    r"{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

PHI3_5_MINI = (
    r"{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    r"{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    r"{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    r"{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

PHI3_MINI_OLD = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    r"{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    r"{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}"
    r"{% endif %}{% endfor %}")

DEEPSEEK_LLM_CHAT = (
    r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    r"{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    r"{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    r"{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    r"{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    r"{{ 'Assistant:' }}{% endif %}")

# Real templates of families hearth does not implement: detection must say "unknown".
UNKNOWN = [
    ("deepseek-ai/deepseek-coder-33b-instruct",
     "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n"
     "{% endif %}\n{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n"
     "    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n"
     "    {%- endif -%}\n{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n"
     "{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
     "Deepseek Company, and you only answer questions related to computer science. For "
     "politically sensitive questions, security and privacy issues, and other non-computer "
     "science questions, you will refuse to answer\\n'}}\n{%- endif %}\n"
     "{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n"
     "{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n"
     "{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n"
     "{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n"
     "    {%- endif %}\n{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n"
     "{% endif %}"),
    ("eachadea/vicuna-13b-1.1",
     "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{- '' + "
     "message['content'] + '\n\n' -}}{%- else -%}{%- if message['role'] == 'user' -%}"
     "{{-'USER: ' + message['content'] + '\n'-}}{%- else -%}{{-'ASSISTANT: ' + "
     "message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}"
     "{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}"),
    ("openchat/openchat-3.5-0106",
     "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() "
     "+ ': ' + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}"
     "{{ 'GPT4 Correct Assistant:' }}{% endif %}"),
    ("THUDM/chatglm3-6b",
     "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n "
     "{{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}"
     "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
    ("microsoft/phi-4 (ChatML markers with <|im_sep|>, not ChatML)",
     "{% for message in messages %}{% if (message['role'] == 'system') %}"
     "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
     "{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] "
     "+ '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') %}"
     "{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}"),
    ("mistralai/Mistral-Large-Instruct-2411 ('v7': [SYSTEM_PROMPT])",
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
     "{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}"
     "{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}"
     "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
     "{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}"
     "{% endif %}{% endfor %}"),
    ("empty template", ""),
]

CONVERSATIONS = [
    ("user", [("user", "Hello!")], True),
    ("system_user", [("system", "You are a terse assistant."), ("user", "What is 2+2?")], True),
    ("multi_turn", [("user", "Hi"), ("assistant", "Hello! How can I help?"),
                    ("user", "Tell me a joke.")], True),
    ("system_multi_turn_no_generation_prompt",
     [("system", "Answer in French."), ("user", "Hello"), ("assistant", "Bonjour !"),
      ("user", "Thanks"), ("assistant", "De rien.")], False),
    ("user_no_generation_prompt", [("user", "Ping")], False),
    # Surrounding whitespace (templates that trim / strip), including the Unicode spaces Python's
    # str.strip() removes (U+00A0, U+2003, U+3000, U+001F), and multi-byte UTF-8.
    ("whitespace_and_unicode",
     [("system", "  Be kind.\n"), ("user", "\t\u2003Caf\u00e9 \u2615 na\u00efve \n"),
      ("assistant", "  Sure thing.  "), ("user", "\u65e5\u672c\u8a9e\u00a0\u3000\u001f")], True),
    ("empty_contents", [("system", ""), ("user", "")], True),
    ("system_only", [("system", "Only a system prompt.")], True),
    ("roles_not_alternating", [("user", "a"), ("user", "b")], True),
    ("starts_with_assistant", [("assistant", "I begin."), ("user", "ok")], True),
    ("system_in_the_middle", [("user", "Hi"), ("assistant", "Hello"),
                              ("system", "Now speak French."), ("user", "Bonjour")], True),
]

CHATML_BOS, CHATML_EOS = "<|im_start|>", "<|im_end|>"
FAMILIES = {
    "chatml": [
        # The first one is filled in from the SmolLM2 GGUF by main().
        dict(source="Qwen/Qwen2.5-7B-Instruct", template=QWEN2_5_INSTRUCT, bos="", eos=CHATML_EOS,
             render=True,
             default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        dict(source="Qwen/Qwen2-7B-Instruct", template=QWEN2_INSTRUCT, bos="", eos=CHATML_EOS,
             render=True, default_system="You are a helpful assistant."),
        dict(source="teknium/OpenHermes-2.5-Mistral-7B", template=OPENHERMES_2_5, bos="<s>",
             eos=CHATML_EOS, render=True, default_system=""),
        dict(source="Qwen/Qwen3-0.6B", template=QWEN3, bos="", eos=CHATML_EOS, render=False,
             default_system="",
             note="a final assistant message after the last user turn gets an empty "
                  "<think></think> block"),
    ],
    "llama3": [
        dict(source="meta-llama/Meta-Llama-3-8B-Instruct", template=LLAMA3_INSTRUCT,
             bos="<|begin_of_text|>", eos="<|eot_id|>", render=True),
        dict(source="meta-llama/Llama-3.2-3B-Instruct", template=LLAMA3_2_INSTRUCT,
             bos="<|begin_of_text|>", eos="<|eot_id|>", render=False,
             note="always opens with a system turn holding 'Cutting Knowledge Date' and today's "
                  "date"),
    ],
    "llama2": [
        dict(source="meta-llama/Llama-2-7b-chat-hf", template=LLAMA2_CHAT, bos="<s>", eos="</s>",
             render=True),
    ],
    "mistral": [
        dict(source="mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template)",
             template=MISTRAL_V1, bos="<s>", eos="</s>", render=True),
        dict(source="mistralai/Mixtral-8x7B-Instruct-v0.1 (original template)",
             template=MISTRAL_INSTRUCT_OLD, bos="<s>", eos="</s>", render=False,
             note="no space before [INST] or the answer; refuses a system message"),
    ],
    "zephyr": [
        dict(source="TinyLlama/TinyLlama-1.1B-Chat-v1.0 (= HuggingFaceH4/zephyr-7b-beta)",
             template=ZEPHYR, bos="<s>", eos="</s>", render=True),
    ],
    "gemma": [
        dict(source="google/gemma-3-1b-it", template=GEMMA3, bos="<bos>", eos="<eos>",
             render=True),
        dict(source="google/gemma-2-2b-it", template=GEMMA2, bos="<bos>", eos="<eos>",
             render=False, note="refuses a system message (Gemma 3 prepends it to the first "
                                "user turn); otherwise the same"),
    ],
    "phi3": [
        dict(source="microsoft/Phi-3.5-mini-instruct", template=PHI3_5_MINI, bos="<s>",
             eos="<|endoftext|>", render=True),
        dict(source="microsoft/Phi-3-mini-4k-instruct (original template)", template=PHI3_MINI_OLD,
             bos="<s>", eos="<|endoftext|>", render=False,
             note="starts with BOS and drops system messages"),
    ],
    "deepseek": [
        dict(source="deepseek-ai/deepseek-llm-7b-chat (= DeepSeek-V2-Chat)",
             template=DEEPSEEK_LLM_CHAT, bos="<\uff5cbegin\u2581of\u2581sentence\uff5c>",
             eos="<\uff5cend\u2581of\u2581sentence\uff5c>", render=True),
    ],
}


def jinja_env():
    """The environment transformers renders chat templates in."""
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env


def conversations_json():
    return [{"name": name, "messages": [{"role": role, "content": content} for role, content in turns],
             "add_generation_prompt": add_generation_prompt}
            for name, turns, add_generation_prompt in CONVERSATIONS]


def render_cases(env, spec):
    """{"name", "expected"} per conversation, or {"name", "error"} where the template refuses it."""
    compiled = env.from_string(spec["template"])
    cases = []
    for conversation in conversations_json():
        case = {"name": conversation["name"]}
        try:
            case["expected"] = compiled.render(
                messages=conversation["messages"],
                add_generation_prompt=conversation["add_generation_prompt"],
                bos_token=spec["bos"], eos_token=spec["eos"])
        except TemplateError as error:
            case["error"] = str(error)
        cases.append(case)
    return cases


def smollm2_template():
    path = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        sys.exit(f"{path} not found: run scripts/get-model.sh smollm2")
    return gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()


def main():
    FAMILIES["chatml"].insert(0, dict(
        source="HuggingFaceTB/SmolLM2-135M-Instruct (tokenizer.chat_template of the GGUF)",
        template=smollm2_template(), bos=CHATML_BOS, eos=CHATML_EOS, render=True,
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
    env = jinja_env()
    OUT.mkdir(parents=True, exist_ok=True)
    for family, specs in FAMILIES.items():
        templates = []
        for spec in specs:
            entry = {"source": spec["source"], "template": spec["template"],
                     "bos_token": spec["bos"], "eos_token": spec["eos"], "render": spec["render"]}
            if "default_system" in spec:
                entry["default_system"] = spec["default_system"]
            if "note" in spec:
                entry["note"] = spec["note"]
            if spec["render"]:
                entry["cases"] = render_cases(env, spec)
            templates.append(entry)
        path = OUT / f"{family}.json"
        path.write_text(json.dumps({"family": family, "conversations": conversations_json(),
                                    "templates": templates}, indent=1,
                                   ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({len(templates)} templates)")
    unknown = [{"source": source, "template": template} for source, template in UNKNOWN]
    path = OUT / "unknown.json"
    path.write_text(json.dumps({"templates": unknown}, indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({len(unknown)} templates)")


if __name__ == "__main__":
    main()
