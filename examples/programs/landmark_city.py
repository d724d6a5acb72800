def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    buildings = image_patch.find("building")
    if not buildings:
        return "N/A"
    name = buildings[0].query("What is the name of this building?")
    return image_patch.llm_query(f"In which city is {name}?", long_answer=False)
